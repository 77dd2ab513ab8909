//! Fingerprints of top-k attention: per layer and head, `k` key positions and their scores.

use super::FINGERPRINT_DIM;
use super::accumulate::StepAccumulator;
use super::dense::resolve_queries;
use super::kernel::bad_value;
use super::segments::{SEGMENTS, segment_of};
use crate::error::{CoreError, Result};
use crate::parallel;

/// The shape of a top-k batch: `steps x layers x heads x k` positions and as many scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopkShape {
    pub steps: usize,
    pub layers: usize,
    pub heads: usize,
    pub k: usize,
}

/// Fingerprints from top-k entries. Each row is normalised by the sum of its scores, as the
/// spec says for rows that do not sum to 1. Positions must be distinct within a row and lie in
/// `0..context_length`; `query_positions` holds one position per step.
pub fn compute_sparse(
    positions: &[i64],
    scores: &[f32],
    shape: TopkShape,
    query_positions: &[i64],
    context_length: usize,
) -> Result<Vec<f32>> {
    let TopkShape {
        steps,
        layers,
        heads,
        k,
    } = shape;
    if layers == 0 || heads == 0 || k == 0 {
        return Err(CoreError::Shape(format!(
            "top-k input needs at least one layer, head and entry, got (L={layers}, H={heads}, k={k})"
        )));
    }
    let step_len = layers * heads * k;
    if positions.len() != steps * step_len || scores.len() != positions.len() {
        return Err(CoreError::Shape(format!(
            "top-k positions hold {} values and scores {}, but (T={steps}, L={layers}, H={heads}, \
             k={k}) needs {} each",
            positions.len(),
            scores.len(),
            steps * step_len
        )));
    }
    if context_length == 0 {
        return Err(CoreError::Shape("context_length must be at least 1".into()));
    }
    let queries = resolve_queries(Some(query_positions), steps, context_length)?;
    let mut out = vec![0.0f32; steps * FINGERPRINT_DIM];
    parallel::try_for_each_row(&mut out, FINGERPRINT_DIM, step_len, |t, fp| {
        let range = t * step_len..(t + 1) * step_len;
        sparse_step(
            &positions[range.clone()],
            &scores[range],
            &shape,
            t,
            queries[t],
            context_length,
            fp,
        )
    })?;
    Ok(out)
}

fn sparse_step(
    positions: &[i64],
    scores: &[f32],
    shape: &TopkShape,
    t: usize,
    query: usize,
    context_length: usize,
    out: &mut [f32],
) -> Result<()> {
    let mut acc = StepAccumulator::new(shape.layers, shape.heads);
    let mut seen: Vec<i64> = Vec::with_capacity(shape.k);
    for (r, (pos_row, score_row)) in positions
        .chunks_exact(shape.k)
        .zip(scores.chunks_exact(shape.k))
        .enumerate()
    {
        let at = || {
            format!(
                "top-k step {t}, layer {}, head {}",
                r / shape.heads,
                r % shape.heads
            )
        };
        let mut segments = [0.0f64; SEGMENTS];
        let mut xlogx = 0.0f64;
        for (i, (&p, &s)) in pos_row.iter().zip(score_row).enumerate() {
            if let Some(why) = bad_value(s) {
                return Err(CoreError::AttentionValue(format!(
                    "{}, entry {i}: score is {why}",
                    at()
                )));
            }
            let key = usize::try_from(p)
                .ok()
                .filter(|&p| p < context_length)
                .ok_or_else(|| {
                    CoreError::AttentionValue(format!(
                        "{}, entry {i}: position {p} is outside 0..{}",
                        at(),
                        context_length - 1
                    ))
                })?;
            let s = s as f64;
            segments[segment_of(key.abs_diff(query) as u64)] += s;
            if s > 0.0 {
                xlogx += s * s.ln();
            }
        }
        seen.clear();
        seen.extend_from_slice(pos_row);
        seen.sort_unstable();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(CoreError::AttentionValue(format!(
                "{}: position {} appears more than once",
                at(),
                w[0]
            )));
        }
        let total: f64 = segments.iter().sum();
        if !(total.is_finite() && total > 0.0) {
            return Err(CoreError::AttentionValue(format!(
                "{}: scores sum to {total}, nothing to normalise",
                at()
            )));
        }
        acc.add_row(r / shape.heads, &segments, total, xlogx, shape.k);
    }
    acc.finish(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::{AttnShape, compute_dense};

    #[test]
    fn topk_of_a_sparse_row_equals_the_dense_fingerprint() {
        // A dense row that is zero outside 5 keys gives the same fingerprint as its top-5.
        let n = 2000;
        let keys = [1999i64, 1990, 1700, 900, 3];
        let weights = [0.4f32, 0.3, 0.15, 0.1, 0.05];
        let mut dense = vec![0.0f32; n];
        for (&k, &w) in keys.iter().zip(&weights) {
            dense[k as usize] = w;
        }
        let a = compute_dense(
            &dense,
            AttnShape {
                steps: 1,
                layers: 1,
                heads: 1,
                keys: n,
            },
            None,
        )
        .unwrap();
        let shape = TopkShape {
            steps: 1,
            layers: 1,
            heads: 1,
            k: 5,
        };
        let b = compute_sparse(&keys, &weights, shape, &[1999], n).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?}\n{b:?}");
        }
    }

    #[test]
    fn errors_name_the_entry() {
        let shape = TopkShape {
            steps: 1,
            layers: 1,
            heads: 2,
            k: 2,
        };
        let err = compute_sparse(&[0, 1, 2, 9], &[0.5; 4], shape, &[5], 6).unwrap_err();
        assert_eq!(
            err.to_string(),
            "top-k step 0, layer 0, head 1, entry 1: position 9 is outside 0..5"
        );
        let err = compute_sparse(&[0, 1, 2, 2], &[0.5; 4], shape, &[5], 6).unwrap_err();
        assert!(
            err.to_string()
                .contains("position 2 appears more than once"),
            "{err}"
        );
        let err =
            compute_sparse(&[0, 1, 2, 3], &[0.5, f32::NAN, 0.1, 0.1], shape, &[5], 6).unwrap_err();
        assert!(
            err.to_string().contains("head 0, entry 1: score is NaN"),
            "{err}"
        );
        let err = compute_sparse(&[0, 1, 2, 3], &[0.0, 0.0, 0.1, 0.1], shape, &[5], 6).unwrap_err();
        assert!(err.to_string().contains("head 0: scores sum to 0"), "{err}");
    }
}
