//! The per-row kernel: sum, `sum a ln a` and minimum of a row in one vectorised pass, and plain
//! sums of the distance-segment ranges (a second pass over a row that is already in L1).

use super::fastmath;
use half::slice::HalfFloatSliceExt;

/// An element type that attention arrives in.
pub trait Element: Copy + Send + Sync + 'static {
    /// The row as float32: the row itself, or `buf` filled with it widened.
    fn widen<'a>(row: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32];
}

impl Element for f32 {
    #[inline(always)]
    fn widen<'a>(row: &'a [f32], _buf: &'a mut Vec<f32>) -> &'a [f32] {
        row
    }
}

impl Element for half::f16 {
    /// Uses F16C where the CPU has it (detected by `half`), else exact integer widening.
    #[inline(always)]
    fn widen<'a>(row: &'a [half::f16], buf: &'a mut Vec<f32>) -> &'a [f32] {
        buf.resize(row.len(), 0.0);
        row.convert_to_f32_slice(buf);
        buf
    }
}

/// What one pass over a row gives.
#[derive(Debug, Clone, Copy)]
pub struct RowStats {
    pub sum: f32,
    pub xlogx: f32,
    /// Smallest value (NaN never lowers it; NaN shows up in `sum`).
    pub min: f32,
}

/// Lanes per iteration: two AVX registers, or four SSE ones. Independent accumulators also
/// keep float32 sums accurate (each lane sums at most a few hundred values of a row).
const LANES: usize = 16;

#[inline(always)]
fn accumulate<const FMA: bool>(v: f32, sum: &mut f32, xlogx: &mut f32, min: &mut f32) {
    *sum += v;
    *xlogx += v * fastmath::ln::<FMA>(v);
    *min = if v < *min { v } else { *min };
}

#[inline(always)]
pub fn row_stats<const FMA: bool>(values: &[f32]) -> RowStats {
    let mut sum = [0.0f32; LANES];
    let mut xlogx = [0.0f32; LANES];
    let mut min = [f32::INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        let chunk: &[f32; LANES] = chunk.try_into().expect("chunks_exact gives LANES");
        for i in 0..LANES {
            accumulate::<FMA>(chunk[i], &mut sum[i], &mut xlogx[i], &mut min[i]);
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        accumulate::<FMA>(v, &mut sum[i], &mut xlogx[i], &mut min[i]);
    }
    RowStats {
        sum: sum.iter().sum(),
        xlogx: xlogx.iter().sum(),
        min: min.iter().copied().fold(f32::INFINITY, f32::min),
    }
}

/// Sum of a slice in 16 independent lanes (a plain iterator sum is one serial chain).
#[inline(always)]
pub fn lane_sum(values: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        let chunk: &[f32; LANES] = chunk.try_into().expect("chunks_exact gives LANES");
        for i in 0..LANES {
            acc[i] += chunk[i];
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

/// Why a value is unusable as an attention weight, if it is.
pub fn bad_value(v: f32) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v.is_infinite() {
        Some(if v > 0.0 { "infinity" } else { "-infinity" })
    } else if v < 0.0 {
        Some("negative")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_match_a_plain_loop() {
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32) / 1000.0)
            .collect();
        for len in [0, 1, 15, 16, 17, 999, 1000] {
            let v = &values[..len];
            let want_sum: f64 = v.iter().map(|&x| x as f64).sum();
            let want_xl: f64 = v
                .iter()
                .map(|&x| {
                    if x > 0.0 {
                        x as f64 * (x as f64).ln()
                    } else {
                        0.0
                    }
                })
                .sum();
            for st in [row_stats::<false>(v), row_stats::<true>(v)] {
                assert!((st.sum as f64 - want_sum).abs() < 1e-4, "{len}");
                assert!((st.xlogx as f64 - want_xl).abs() < 1e-4, "{len}");
            }
            assert!((lane_sum(v) as f64 - want_sum).abs() < 1e-4, "{len}");
        }
    }

    #[test]
    fn min_sees_negatives_and_nan_poisons_sum() {
        let st = row_stats::<false>(&[0.5, -0.25, 0.1]);
        assert_eq!(st.min, -0.25);
        let st = row_stats::<false>(&[0.5, f32::NAN, 0.1]);
        assert!(st.sum.is_nan());
    }
}
