//! Fingerprints of dense attention rows `[T, L, H, N]`.

use super::accumulate::StepAccumulator;
use super::kernel::{Element, bad_value, lane_sum, row_stats};
use super::segments::{SEGMENTS, key_ranges};
use super::{FINGERPRINT_DIM, simd};
use crate::error::{CoreError, Result};
use crate::parallel;

/// The shape of a dense attention batch: `steps` query rows, each `layers x heads x keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub steps: usize,
    pub layers: usize,
    pub heads: usize,
    pub keys: usize,
}

impl AttnShape {
    fn step_len(&self) -> usize {
        self.layers * self.heads * self.keys
    }

    fn validate(&self, len: usize) -> Result<()> {
        for (what, v) in [
            ("layers", self.layers),
            ("heads", self.heads),
            ("keys", self.keys),
        ] {
            if v == 0 {
                return Err(CoreError::Shape(format!(
                    "attention has no {what} (shape {self})"
                )));
            }
        }
        let want = self.steps.checked_mul(self.step_len());
        if want != Some(len) {
            return Err(CoreError::Shape(format!(
                "attention buffer holds {len} values but shape {self} needs {}",
                want.map_or("more than usize".to_string(), |w| w.to_string())
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for AttnShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "(T={}, L={}, H={}, N={})",
            self.steps, self.layers, self.heads, self.keys
        )
    }
}

/// Query positions: the given ones after checking them, or the causal-prefill default
/// `N - T + t` for step `t`.
pub(crate) fn resolve_queries(
    given: Option<&[i64]>,
    steps: usize,
    keys: usize,
) -> Result<Vec<usize>> {
    match given {
        Some(q) => {
            if q.len() != steps {
                return Err(CoreError::Shape(format!(
                    "query_positions has {} entries but there are {steps} steps",
                    q.len()
                )));
            }
            q.iter()
                .enumerate()
                .map(|(t, &p)| {
                    usize::try_from(p)
                        .ok()
                        .filter(|&p| p < keys)
                        .ok_or_else(|| {
                            CoreError::AttentionValue(format!(
                                "query position {p} of step {t} is outside 0..{}",
                                keys - 1
                            ))
                        })
                })
                .collect()
        }
        None if steps > keys => Err(CoreError::Shape(format!(
            "{steps} steps over {keys} keys: the default query positions (N - T + t) would be \
             negative; pass query_positions"
        ))),
        None => Ok((0..steps).map(|t| keys - steps + t).collect()),
    }
}

/// Fingerprints of `steps` query rows, row-major `[T, L, H, N]` in `data`, one query position
/// per step. Returns `T * 20` floats.
pub fn compute_dense<E: Element>(
    data: &[E],
    shape: AttnShape,
    query_positions: Option<&[i64]>,
) -> Result<Vec<f32>> {
    shape.validate(data.len())?;
    let queries = resolve_queries(query_positions, shape.steps, shape.keys)?;
    let step_len = shape.step_len();
    let mut out = vec![0.0f32; shape.steps * FINGERPRINT_DIM];
    parallel::try_for_each_row(&mut out, FINGERPRINT_DIM, step_len, |t, fp| {
        let step = &data[t * step_len..(t + 1) * step_len];
        dense_step(step, &shape, t, queries[t], fp)
    })?;
    Ok(out)
}

fn dense_step<E: Element>(
    step: &[E],
    shape: &AttnShape,
    t: usize,
    query: usize,
    out: &mut [f32],
) -> Result<()> {
    // SAFETY: simd::level() only returns a path whose features the CPU has (`detected`).
    #[cfg(target_arch = "x86_64")]
    match simd::level() {
        simd::Level::Avx512 => return unsafe { dense_step_avx512(step, shape, t, query, out) },
        simd::Level::Avx2Fma => return unsafe { dense_step_avx2(step, shape, t, query, out) },
        simd::Level::Baseline => {}
    }
    dense_step_with::<E, false>(step, shape, t, query, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dense_step_avx2<E: Element>(
    step: &[E],
    shape: &AttnShape,
    t: usize,
    query: usize,
    out: &mut [f32],
) -> Result<()> {
    dense_step_with::<E, true>(step, shape, t, query, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn dense_step_avx512<E: Element>(
    step: &[E],
    shape: &AttnShape,
    t: usize,
    query: usize,
    out: &mut [f32],
) -> Result<()> {
    dense_step_with::<E, true>(step, shape, t, query, out)
}

#[inline(always)]
fn dense_step_with<E: Element, const FMA: bool>(
    step: &[E],
    shape: &AttnShape,
    t: usize,
    query: usize,
    out: &mut [f32],
) -> Result<()> {
    let ranges = key_ranges(query, shape.keys);
    let mut acc = StepAccumulator::new(shape.layers, shape.heads);
    let mut widened = Vec::new();
    for (r, row) in step.chunks_exact(shape.keys).enumerate() {
        let row = E::widen(row, &mut widened);
        let stats = row_stats::<FMA>(row);
        if !(stats.sum.is_finite() && stats.sum > 0.0 && stats.min >= 0.0) {
            return Err(row_error(row, shape, t, r, stats.sum as f64));
        }
        let mut segments = [0.0f64; SEGMENTS];
        for kr in &ranges {
            segments[kr.segment] += lane_sum(&row[kr.start..kr.end]) as f64;
        }
        // Normalise by the segments' own total so the ranges and the histogram sum to 1.
        let total: f64 = segments.iter().sum();
        acc.add_row(
            r / shape.heads,
            &segments,
            total,
            stats.xlogx as f64,
            shape.keys,
        );
    }
    acc.finish(out);
    Ok(())
}

/// The error for a row that failed the fast check: the first bad value, else its sum.
#[cold]
fn row_error(row: &[f32], shape: &AttnShape, t: usize, r: usize, total: f64) -> CoreError {
    let (layer, head) = (r / shape.heads, r % shape.heads);
    let at = format!("attention step {t}, layer {layer}, head {head}");
    if let Some((k, why)) = row
        .iter()
        .enumerate()
        .find_map(|(k, &v)| bad_value(v).map(|w| (k, w)))
    {
        return CoreError::AttentionValue(format!("{at}, key {k} is {why}"));
    }
    if total == 0.0 {
        CoreError::AttentionValue(format!(
            "{at} sums to 0: the row has no attention to normalise"
        ))
    } else {
        CoreError::AttentionValue(format!("{at} sums to {total}: too large for float32"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(shape: AttnShape) -> Vec<f32> {
        vec![1.0 / shape.keys as f32; shape.steps * shape.step_len()]
    }

    #[test]
    fn uniform_attention_has_max_entropy_and_unit_mass() {
        let shape = AttnShape {
            steps: 3,
            layers: 2,
            heads: 4,
            keys: 300,
        };
        let fps = compute_dense(&uniform(shape), shape, None).unwrap();
        for fp in fps.chunks(20) {
            let ranges: f32 = fp[..3].iter().sum();
            let hist: f32 = fp[4..12].iter().sum();
            assert!((ranges - 1.0).abs() < 1e-5 && (hist - 1.0).abs() < 1e-5);
            assert!((fp[3] - (300f32).ln()).abs() < 1e-4, "{}", fp[3]);
            // Two layers: slots 0 and 1 hold them, the rest are zero.
            assert!((fp[12] - fp[3]).abs() < 1e-5 && (fp[13] - fp[3]).abs() < 1e-5);
            assert!(fp[14..].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn one_hot_on_self_is_all_local_and_zero_entropy() {
        let shape = AttnShape {
            steps: 1,
            layers: 9,
            heads: 1,
            keys: 40,
        };
        let mut data = vec![0.0f32; shape.step_len()];
        for l in 0..9 {
            data[l * 40 + 39] = 1.0;
        }
        let fp = compute_dense(&data, shape, None).unwrap();
        assert_eq!(fp[0], 1.0);
        assert_eq!(fp[4], 1.0);
        assert!(fp[3].abs() < 1e-6);
    }

    #[test]
    fn bad_values_are_named() {
        let shape = AttnShape {
            steps: 2,
            layers: 2,
            heads: 3,
            keys: 5,
        };
        let mut data = uniform(shape);
        let idx = shape.step_len() + (3 + 2) * 5 + 4; // step 1, layer 1, head 2, key 4
        for (v, why) in [
            (f32::NAN, "NaN"),
            (f32::INFINITY, "infinity"),
            (-0.5, "negative"),
        ] {
            data[idx] = v;
            let err = compute_dense(&data, shape, None).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("attention step 1, layer 1, head 2, key 4 is {why}")
            );
        }
        let mut data = uniform(shape);
        data[..5].fill(0.0);
        let err = compute_dense(&data, shape, None).unwrap_err().to_string();
        assert!(err.contains("step 0, layer 0, head 0 sums to 0"), "{err}");
    }

    #[test]
    fn shapes_and_queries_are_checked() {
        let shape = AttnShape {
            steps: 2,
            layers: 1,
            heads: 1,
            keys: 4,
        };
        assert!(matches!(
            compute_dense(&[0.25f32; 7], shape, None),
            Err(CoreError::Shape(_))
        ));
        let err = compute_dense(&[0.25f32; 8], shape, Some(&[0, 4])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "query position 4 of step 1 is outside 0..3"
        );
        let err = compute_dense(&[0.25f32; 8], shape, Some(&[0])).unwrap_err();
        assert!(matches!(err, CoreError::Shape(_)));
        let shape = AttnShape {
            steps: 5,
            layers: 1,
            heads: 1,
            keys: 4,
        };
        assert!(matches!(
            compute_dense(&[0.25f32; 20], shape, None),
            Err(CoreError::Shape(_))
        ));
    }

    #[test]
    fn float16_equals_float32_of_the_same_values() {
        let shape = AttnShape {
            steps: 4,
            layers: 3,
            heads: 2,
            keys: 70,
        };
        let halves: Vec<half::f16> = (0..shape.steps * shape.step_len())
            .map(|i| half::f16::from_f32(((i * 7919) % 1000) as f32 / 1000.0))
            .collect();
        let singles: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
        let a = compute_dense(&halves, shape, None).unwrap();
        let b = compute_dense(&singles, shape, None).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn baseline_and_avx2_paths_agree() {
        let shape = AttnShape {
            steps: 1,
            layers: 2,
            heads: 2,
            keys: 1500,
        };
        let data: Vec<f32> = (0..shape.step_len())
            .map(|i| ((i * 31) % 97) as f32 + 0.5)
            .collect();
        let mut a = vec![0.0; 20];
        let mut b = vec![0.0; 20];
        dense_step_with::<f32, false>(&data, &shape, 0, 1499, &mut a).unwrap();
        dense_step_with::<f32, true>(&data, &shape, 0, 1499, &mut b).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} {b:?}");
        }
    }
}
