//! `softmax(q k^T * scale + bias)` for one query row per sequence and head, over every layer,
//! and the sequence's fingerprint from the same pass (the rows are still in L1).

use ndarray::{ArrayView1, ArrayView3, ArrayView4, Axis};

use super::scores::scores;
use super::softmax::softmax;
use crate::error::{CoreError, Result};
use crate::fingerprint::accumulate::StepAccumulator;
use crate::fingerprint::kernel::lane_sum;
use crate::fingerprint::segments::{KeyRange, SEGMENTS, key_ranges};
use crate::fingerprint::{AttnShape, FINGERPRINT_DIM, simd};
use crate::parallel;

/// One layer's inputs at a decode step.
#[derive(Debug, Clone)]
pub struct LayerQueryKeys<'a> {
    /// `(B, H, D)`: each sequence's query, after any rotary embedding.
    pub query: ArrayView3<'a, f32>,
    /// `(B, KV, N, D)`: every key the query sees; `H` is a multiple of `KV` (grouped-query
    /// attention: query head `h` reads key head `h / (H / KV)`).
    pub keys: ArrayView4<'a, f32>,
    /// Added to the scores before the softmax, `(B or 1, H or 1, N)`; `-inf` masks a key.
    pub bias: Option<ArrayView3<'a, f32>>,
    pub scale: f32,
}

/// A step's rows and fingerprints: per sequence, `L x H' x N` probabilities followed by the
/// sequence's 20-value fingerprint (query at `N - 1`), computed in the same pass.
#[derive(Debug, Clone)]
pub struct StepRows {
    data: Vec<f32>,
    /// `steps` is the batch size, `heads` the number of selected heads.
    pub shape: AttnShape,
}

impl StepRows {
    fn row_len(&self) -> usize {
        self.shape.layers * self.shape.heads * self.shape.keys
    }

    fn width(&self) -> usize {
        self.row_len() + FINGERPRINT_DIM
    }

    /// Sequence `b`'s rows, `L x H' x N`.
    pub fn rows(&self, b: usize) -> &[f32] {
        &self.data[b * self.width()..][..self.row_len()]
    }

    /// Sequence `b`'s fingerprint.
    pub fn fingerprint(&self, b: usize) -> &[f32] {
        &self.data[b * self.width() + self.row_len()..][..FINGERPRINT_DIM]
    }

    /// All rows, `(B, L, H', N)` row-major.
    pub fn into_rows(self) -> Vec<f32> {
        let (len, width) = (self.row_len(), self.width());
        let mut data = self.data;
        for b in 1..self.shape.steps {
            data.copy_within(b * width..b * width + len, b * len);
        }
        data.truncate(self.shape.steps * len);
        data
    }
}

/// Attention probabilities of every sequence's last query, for the selected `heads` (all
/// heads when None), with their fingerprints. Every layer must have the same batch, context
/// and head count.
pub fn query_rows(layers: &[LayerQueryKeys<'_>], heads: Option<&[usize]>) -> Result<StepRows> {
    let Some(first) = layers.first() else {
        return Err(CoreError::Shape("no layers were given".into()));
    };
    let (batch, all_heads, keys) = (
        first.query.len_of(Axis(0)),
        first.query.len_of(Axis(1)),
        first.keys.len_of(Axis(2)),
    );
    for (l, layer) in layers.iter().enumerate() {
        check_layer(l, layer, batch, all_heads, keys)?;
    }
    let heads: Vec<usize> = match heads {
        Some(h) => {
            if let Some(&bad) = h.iter().find(|&&h| h >= all_heads) {
                return Err(CoreError::Shape(format!(
                    "head {bad} is out of range: the layers have {all_heads} heads"
                )));
            }
            if h.is_empty() {
                return Err(CoreError::Shape("the head selection is empty".into()));
            }
            h.to_vec()
        }
        None => (0..all_heads).collect(),
    };
    let shape = AttnShape {
        steps: batch,
        layers: layers.len(),
        heads: heads.len(),
        keys,
    };
    let len = shape.layers * shape.heads * keys;
    let mut data = vec![0.0f32; batch * (len + FINGERPRINT_DIM)];
    let dim = first.query.len_of(Axis(2));
    let ranges = key_ranges(keys - 1, keys);
    let step = Step {
        layers,
        heads: &heads,
        ranges: &ranges,
    };
    parallel::try_for_each_row(&mut data, len + FINGERPRINT_DIM, len * dim, |b, out| {
        sequence_rows(&step, b, out)
    })?;
    Ok(StepRows { data, shape })
}

fn check_layer(
    l: usize,
    layer: &LayerQueryKeys<'_>,
    batch: usize,
    heads: usize,
    keys: usize,
) -> Result<()> {
    let (q, k) = (layer.query.shape(), layer.keys.shape());
    let bad = |what: String| Err(CoreError::Shape(format!("layer {l}: {what}")));
    if q[0] != batch || q[1] != heads {
        return bad(format!(
            "queries are {q:?} but the first layer's are ({batch}, {heads}, D)"
        ));
    }
    if k[0] != batch || k[2] != keys || k[3] != q[2] {
        return bad(format!(
            "keys are {k:?} but the queries {q:?} need ({batch}, KV, {keys}, {})",
            q[2]
        ));
    }
    if keys == 0 || q[2] == 0 {
        return bad(format!("queries {q:?} and keys {k:?} are empty"));
    }
    if k[1] == 0 || heads % k[1] != 0 {
        return bad(format!(
            "{heads} query heads are not a multiple of {} key heads",
            k[1]
        ));
    }
    if !layer.scale.is_finite() {
        return bad(format!("scale {} is not finite", layer.scale));
    }
    if let Some(bias) = &layer.bias {
        let s = bias.shape();
        if !(s[0] == 1 || s[0] == batch) || !(s[1] == 1 || s[1] == heads) || s[2] != keys {
            return bad(format!(
                "the mask is {s:?}, which does not broadcast to ({batch}, {heads}, {keys})"
            ));
        }
    }
    Ok(())
}

/// What every sequence of a step shares: the layers, the selected heads, and the key ranges of
/// the distance segments (query at `N - 1`).
struct Step<'s, 'a> {
    layers: &'s [LayerQueryKeys<'a>],
    heads: &'s [usize],
    ranges: &'s [KeyRange],
}

/// Fills `out` (`L x H' x N` rows, then the fingerprint) for sequence `b`.
fn sequence_rows(step: &Step<'_, '_>, b: usize, out: &mut [f32]) -> Result<()> {
    // SAFETY: simd::level() only returns a path whose features the CPU has (`detected`).
    #[cfg(target_arch = "x86_64")]
    match simd::level() {
        simd::Level::Avx512 => return unsafe { sequence_rows_avx512(step, b, out) },
        simd::Level::Avx2Fma => return unsafe { sequence_rows_avx2(step, b, out) },
        simd::Level::Baseline => {}
    }
    sequence_rows_with::<false>(step, b, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sequence_rows_avx2(step: &Step<'_, '_>, b: usize, out: &mut [f32]) -> Result<()> {
    sequence_rows_with::<true>(step, b, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn sequence_rows_avx512(step: &Step<'_, '_>, b: usize, out: &mut [f32]) -> Result<()> {
    sequence_rows_with::<true>(step, b, out)
}

#[inline(always)]
fn sequence_rows_with<const FMA: bool>(
    step: &Step<'_, '_>,
    b: usize,
    out: &mut [f32],
) -> Result<()> {
    let Step {
        layers,
        heads,
        ranges,
    } = *step;
    let (rows, fingerprint) = out.split_at_mut(out.len() - FINGERPRINT_DIM);
    let keys = rows.len() / (layers.len() * heads.len());
    let mut acc = StepAccumulator::new(layers.len(), heads.len());
    let (mut query, mut shifted) = (Vec::new(), Vec::new());
    let mut out_rows = rows.chunks_exact_mut(keys);
    for (l, layer) in layers.iter().enumerate() {
        let groups = layer.query.len_of(Axis(1)) / layer.keys.len_of(Axis(1));
        for &h in heads {
            let row = out_rows.next().expect("one row per layer and head");
            query.clear();
            query.extend(layer.query.slice(ndarray::s![b, h, ..]).iter().copied());
            let keys = layer.keys.slice(ndarray::s![b, h / groups, .., ..]);
            scores::<FMA>(&query, keys, layer.scale, row);
            if let Some(bias) = &layer.bias {
                let bb = if bias.len_of(Axis(0)) == 1 { 0 } else { b };
                let bh = if bias.len_of(Axis(1)) == 1 { 0 } else { h };
                add_bias(row, bias.slice(ndarray::s![bb, bh, ..]));
            }
            let xlogx = softmax::<FMA>(row, &mut shifted).map_err(|why| {
                CoreError::AttentionValue(format!("layer {l}, sequence {b}, head {h}: {why}"))
            })?;
            // The fingerprint's sums, as the dense kernel takes them, from the row in L1.
            let mut segments = [0.0f64; SEGMENTS];
            for kr in ranges {
                segments[kr.segment] += lane_sum(&row[kr.start..kr.end]) as f64;
            }
            let total: f64 = segments.iter().sum();
            acc.add_row(l, &segments, total, xlogx as f64, row.len());
        }
    }
    acc.finish(fingerprint);
    Ok(())
}

fn add_bias(row: &mut [f32], bias: ArrayView1<'_, f32>) {
    for (r, b) in row.iter_mut().zip(bias.iter()) {
        *r += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::compute_dense;
    use ndarray::{Array3, Array4};

    fn naive(q: &Array3<f32>, k: &Array4<f32>, scale: f32, b: usize, h: usize) -> Vec<f64> {
        let groups = q.shape()[1] / k.shape()[1];
        let kv = h / groups;
        let s: Vec<f64> = (0..k.shape()[2])
            .map(|n| {
                (0..q.shape()[2])
                    .map(|d| q[[b, h, d]] as f64 * k[[b, kv, n, d]] as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = s.iter().copied().fold(f64::MIN, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let t: f64 = e.iter().sum();
        e.iter().map(|v| v / t).collect()
    }

    fn inputs(b: usize, h: usize, kv: usize, n: usize, d: usize) -> (Array3<f32>, Array4<f32>) {
        let q = Array3::from_shape_fn((b, h, d), |(i, j, k)| {
            ((i * 7 + j * 3 + k) % 11) as f32 * 0.1 - 0.5
        });
        let k = Array4::from_shape_fn((b, kv, n, d), |(i, j, m, k)| {
            ((i * 5 + j * 13 + m * 3 + k * 7) % 17) as f32 * 0.07 - 0.6
        });
        (q, k)
    }

    #[test]
    fn grouped_rows_match_a_naive_softmax() {
        let (q, k) = inputs(2, 4, 2, 37, 20);
        let layer = LayerQueryKeys {
            query: q.view(),
            keys: k.view(),
            bias: None,
            scale: 0.3,
        };
        let step = query_rows(&[layer.clone(), layer], Some(&[3, 0])).unwrap();
        let shape = step.shape;
        assert_eq!(
            (shape.steps, shape.layers, shape.heads, shape.keys),
            (2, 2, 2, 37)
        );
        // The fingerprints computed alongside equal the dense kernel's on the same rows.
        for b in 0..2 {
            let one = AttnShape { steps: 1, ..shape };
            let dense = compute_dense(step.rows(b), one, Some(&[36])).unwrap();
            for (x, y) in step.fingerprint(b).iter().zip(&dense) {
                assert!((x - y).abs() < 2e-6, "{x} vs {y}");
            }
        }
        let rows = step.into_rows();
        assert_eq!(rows.len(), 2 * 2 * 2 * 37);
        for b in 0..2 {
            for (j, h) in [3usize, 0].into_iter().enumerate() {
                let want = naive(&q, &k, 0.3, b, h);
                let at = (b * 2 * 2 + 2 + j) * 37; // layer 1
                for n in 0..37 {
                    assert!((rows[at + n] as f64 - want[n]).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn transposed_keys_give_the_same_rows() {
        let (q, k) = inputs(1, 2, 2, 9, 16);
        let kt = k
            .clone()
            .permuted_axes([0, 1, 3, 2])
            .as_standard_layout()
            .to_owned();
        let kt = kt.view().permuted_axes([0, 1, 3, 2]); // same values, columns contiguous
        let run = |keys| {
            let l = LayerQueryKeys {
                query: q.view(),
                keys,
                bias: None,
                scale: 1.0,
            };
            query_rows(&[l], None).unwrap().into_rows()
        };
        let (a, b) = (run(k.view()), run(kt));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6);
        }
    }

    #[test]
    fn bias_masks_keys_and_broadcasts() {
        let (q, k) = inputs(2, 2, 1, 5, 4);
        let mut bias = Array3::<f32>::zeros((2, 1, 5));
        bias[[1, 0, 0]] = f32::NEG_INFINITY;
        bias[[1, 0, 1]] = f32::NEG_INFINITY;
        let l = LayerQueryKeys {
            query: q.view(),
            keys: k.view(),
            bias: Some(bias.view()),
            scale: 0.5,
        };
        let rows = query_rows(&[l], None).unwrap().into_rows();
        // Sequence 1, both heads: the two masked keys get nothing, the rest sums to 1.
        for h in 0..2 {
            let row = &rows[(2 + h) * 5..(3 + h) * 5];
            assert_eq!(&row[..2], &[0.0, 0.0]);
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert!(rows[..10].iter().all(|&v| v > 0.0));
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        let (q, k) = inputs(1, 3, 2, 4, 4);
        let l = LayerQueryKeys {
            query: q.view(),
            keys: k.view(),
            bias: None,
            scale: 1.0,
        };
        let e = query_rows(&[l], None).unwrap_err().to_string();
        assert!(
            e.contains("3 query heads are not a multiple of 2 key heads"),
            "{e}"
        );

        let (q, k) = inputs(1, 2, 1, 4, 4);
        let bias = Array3::from_elem((1, 1, 4), f32::NEG_INFINITY);
        let l = LayerQueryKeys {
            query: q.view(),
            keys: k.view(),
            bias: Some(bias.view()),
            scale: 1.0,
        };
        let e = query_rows(std::slice::from_ref(&l), None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "layer 0, sequence 0, head 0: every key is masked");
        let e = query_rows(
            &[LayerQueryKeys {
                bias: None,
                ..l.clone()
            }],
            Some(&[2]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("head 2 is out of range"), "{e}");

        let mut qn = q.clone();
        qn[[0, 1, 0]] = f32::NAN;
        let l = LayerQueryKeys {
            query: qn.view(),
            keys: k.view(),
            bias: None,
            scale: 1.0,
        };
        let e = query_rows(&[l], None).unwrap_err().to_string();
        assert!(
            e.starts_with("layer 0, sequence 0, head 1: the scores are not finite"),
            "{e}"
        );

        let (q2, k2) = inputs(1, 2, 1, 6, 4);
        let a = LayerQueryKeys {
            query: q.view(),
            keys: k.view(),
            bias: None,
            scale: 1.0,
        };
        let b = LayerQueryKeys {
            query: q2.view(),
            keys: k2.view(),
            bias: None,
            scale: 1.0,
        };
        let e = query_rows(&[a, b], None).unwrap_err().to_string();
        assert!(e.starts_with("layer 1: keys are [1, 1, 6, 4]"), "{e}");
    }
}
