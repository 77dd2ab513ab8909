//! From per-row numbers to the 20 values. Shared by the dense and the top-k paths so that both
//! follow the spec through the same code.

use super::segments::{SEGMENT_BIN, SEGMENT_RANGE, SEGMENTS};
use super::{FINGERPRINT_DIM, HIST_START, LAYER_ENTROPY_START, LAYER_SLOTS};

/// Sums over the rows of one step, in f64 so that thousands of rows add up exactly enough.
pub struct StepAccumulator {
    layers: usize,
    heads: usize,
    /// Mass per segment: sum over rows of (segment sum / row sum).
    segment_mass: [f64; SEGMENTS],
    /// Entropy summed over the heads of each layer.
    layer_entropy: Vec<f64>,
}

impl StepAccumulator {
    pub fn new(layers: usize, heads: usize) -> Self {
        StepAccumulator {
            layers,
            heads,
            segment_mass: [0.0; SEGMENTS],
            layer_entropy: vec![0.0; layers],
        }
    }

    /// Adds one validated row: its per-segment sums, total (> 0), `sum a ln a`, and how many
    /// entries it has (for the `ln(n)` bound on entropy).
    #[inline]
    pub fn add_row(
        &mut self,
        layer: usize,
        segments: &[f64; SEGMENTS],
        total: f64,
        xlogx: f64,
        entries: usize,
    ) {
        let inv = 1.0 / total;
        for (acc, &s) in self.segment_mass.iter_mut().zip(segments) {
            *acc += s * inv;
        }
        // H(a / s) = ln s - (sum a ln a) / s. Rounding can push it a hair outside [0, ln n].
        let entropy = (total.ln() - xlogx * inv).clamp(0.0, (entries as f64).ln());
        self.layer_entropy[layer] += entropy;
    }

    /// Writes the fingerprint.
    pub fn finish(&self, out: &mut [f32]) {
        debug_assert_eq!(out.len(), FINGERPRINT_DIM);
        out.fill(0.0);
        let rows = (self.layers * self.heads) as f64;
        let mut ranges = [0.0f64; 3];
        let mut hist = [0.0f64; 8];
        for seg in 0..SEGMENTS {
            let mass = self.segment_mass[seg] / rows;
            ranges[SEGMENT_RANGE[seg]] += mass;
            hist[SEGMENT_BIN[seg]] += mass;
        }
        for (o, r) in out.iter_mut().zip(ranges) {
            *o = r as f32;
        }
        out[3] = (self.layer_entropy.iter().sum::<f64>() / rows) as f32;
        for (o, h) in out[HIST_START..HIST_START + 8].iter_mut().zip(hist) {
            *o = h as f32;
        }
        let heads = self.heads as f64;
        let slots = &mut out[LAYER_ENTROPY_START..LAYER_ENTROPY_START + LAYER_SLOTS];
        if self.layers < LAYER_SLOTS {
            for (slot, &e) in slots.iter_mut().zip(&self.layer_entropy) {
                *slot = (e / heads) as f32;
            }
        } else {
            let mut sum = [0.0f64; LAYER_SLOTS];
            let mut count = [0usize; LAYER_SLOTS];
            for (l, &e) in self.layer_entropy.iter().enumerate() {
                let j = l * LAYER_SLOTS / self.layers;
                sum[j] += e / heads;
                count[j] += 1;
            }
            for j in 0..LAYER_SLOTS {
                slots[j] = (sum[j] / count[j] as f64) as f32;
            }
        }
    }
}
