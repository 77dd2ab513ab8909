//! What capture keeps of one step's rows, per sequence: `[fingerprint (20), sink mass,
//! top-k scores (k), top-k positions (k)]`.

use super::StepRows;
use crate::error::{CoreError, Result};
use crate::fingerprint::kernel::lane_sum;
use crate::fingerprint::{AttnShape, FINGERPRINT_DIM, compute_dense};

/// Columns before the top-k ones: the fingerprint and the sink mass.
pub const SUMMARY_BASE: usize = FINGERPRINT_DIM + 1;

/// Summaries of `rows`, row-major `(B, L, H, N)` with `shape.steps = B`, each sequence's query
/// at position `N - 1`. `pads[b]` is sequence `b`'s first real key (its left padding): the
/// sink mass is the mean over layers and heads of the share of each row there, and top-k
/// positions are counted from it. `P` is the mean over layers and heads of the rows, each
/// divided by its own sum (as in the fingerprint); the top `min(topk, N)` entries of `P` come
/// best first, ties to the lower position. Returns `B x (21 + 2k)` floats.
pub fn step_summary(
    rows: &[f32],
    shape: AttnShape,
    pads: &[usize],
    topk: usize,
) -> Result<Vec<f32>> {
    check_pads(pads, shape)?;
    let queries = vec![shape.keys as i64 - 1; shape.steps];
    let fingerprints = compute_dense(rows, shape, Some(&queries))?;
    let per_sequence = shape.layers * shape.heads * shape.keys;
    Ok(summarise(shape, pads, topk, |b| {
        (
            &rows[b * per_sequence..(b + 1) * per_sequence],
            &fingerprints[b * FINGERPRINT_DIM..(b + 1) * FINGERPRINT_DIM],
        )
    }))
}

/// [`step_summary`] of rows that [`query_rows`](super::query_rows) computed, with the
/// fingerprints it computed alongside.
pub fn step_rows_summary(step: &StepRows, pads: &[usize], topk: usize) -> Result<Vec<f32>> {
    check_pads(pads, step.shape)?;
    Ok(summarise(step.shape, pads, topk, |b| {
        (step.rows(b), step.fingerprint(b))
    }))
}

fn check_pads(pads: &[usize], shape: AttnShape) -> Result<()> {
    if pads.len() != shape.steps {
        return Err(CoreError::Shape(format!(
            "{} paddings for {} sequences",
            pads.len(),
            shape.steps
        )));
    }
    if let Some((b, &p)) = pads.iter().enumerate().find(|&(_, &p)| p >= shape.keys) {
        return Err(CoreError::AttentionValue(format!(
            "sequence {b}: padding {p} leaves no real key among {}",
            shape.keys
        )));
    }
    Ok(())
}

/// The summaries, from each sequence's valid rows and fingerprint.
fn summarise<'a>(
    shape: AttnShape,
    pads: &[usize],
    topk: usize,
    sequence: impl Fn(usize) -> (&'a [f32], &'a [f32]),
) -> Vec<f32> {
    let keys = shape.keys;
    let k = topk.min(keys);
    let width = SUMMARY_BASE + 2 * k;
    let mut out = vec![0.0f32; shape.steps * width];
    let weight = 1.0 / (shape.layers * shape.heads) as f64;
    let mut mean = vec![0.0f64; if k > 0 { keys } else { 0 }];
    let mut order: Vec<usize> = Vec::with_capacity(mean.len());
    for (b, o) in out.chunks_exact_mut(width).enumerate() {
        let (rows, fingerprint) = sequence(b);
        o[..FINGERPRINT_DIM].copy_from_slice(fingerprint);
        let pad = pads[b];
        if k == 0 {
            // Only the sink: one share per row, no mean row.
            let sink: f64 = rows
                .chunks_exact(keys)
                .map(|row| row[pad] as f64 / lane_sum(row) as f64)
                .sum();
            o[FINGERPRINT_DIM] = (sink * weight) as f32;
            continue;
        }
        mean.iter_mut().for_each(|m| *m = 0.0);
        for row in rows.chunks_exact(keys) {
            // Every row was checked: finite, non-negative, positive sum.
            let scale = weight / lane_sum(row) as f64;
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64 * scale;
            }
        }
        o[FINGERPRINT_DIM] = mean[pad] as f32;
        order.clear();
        order.extend(0..keys);
        let best_first = |x: &usize, y: &usize| mean[*y].total_cmp(&mean[*x]).then(x.cmp(y));
        if k < keys {
            order.select_nth_unstable_by(k - 1, best_first);
        }
        order[..k].sort_unstable_by(best_first);
        for (j, &pos) in order[..k].iter().enumerate() {
            o[SUMMARY_BASE + j] = mean[pos] as f32;
            o[SUMMARY_BASE + k + j] = pos as f32 - pad as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_and_topk_follow_the_normalised_mean() {
        // B=2, L=1, H=2, N=4; the rows do not sum to 1 (as float16 or top-k rows may not).
        let rows = [
            0.2, 0.2, 0.4, 0.2, /* h1 */ 0.0, 0.6, 0.2, 0.2, // b0
            0.0, 1.0, 2.0, 1.0, /* h1 */ 0.0, 3.0, 0.0, 1.0, // b1
        ];
        let shape = AttnShape {
            steps: 2,
            layers: 1,
            heads: 2,
            keys: 4,
        };
        let out = step_summary(&rows, shape, &[0, 1], 3).unwrap();
        let w = SUMMARY_BASE + 6;
        assert_eq!(out.len(), 2 * w);
        let b0 = &out[..w];
        assert!((b0[20] - 0.1).abs() < 1e-7); // (0.2 + 0.0) / 2 at position 0
        // P = [0.1, 0.4, 0.3, 0.2]
        assert_eq!(&b0[21..24], &[0.4, 0.3, 0.2]);
        assert_eq!(&b0[24..27], &[1.0, 2.0, 3.0]);
        let b1 = &out[w..];
        // P = mean([0, .25, .5, .25], [0, .75, 0, .25]) = [0, .5, .25, .25]; pad 1.
        assert!((b1[20] - 0.5).abs() < 1e-7);
        assert_eq!(&b1[21..24], &[0.5, 0.25, 0.25]);
        assert_eq!(&b1[24..27], &[0.0, 1.0, 2.0]); // the tie goes to the lower position
        let fp = compute_dense(&rows, shape, Some(&[3, 3])).unwrap();
        assert_eq!(&b0[..20], &fp[..20]);
        // Without top-k the sink takes a shorter path to the same value.
        let short = step_summary(&rows, shape, &[0, 1], 0).unwrap();
        assert_eq!(short.len(), 2 * SUMMARY_BASE);
        assert_eq!(short[..SUMMARY_BASE], b0[..SUMMARY_BASE]);
        assert!((short[SUMMARY_BASE + 20] - 0.5).abs() < 1e-7);
    }

    #[test]
    fn bad_paddings_are_refused() {
        let shape = AttnShape {
            steps: 1,
            layers: 1,
            heads: 1,
            keys: 2,
        };
        let e = step_summary(&[0.5, 0.5], shape, &[2], 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sequence 0: padding 2 leaves no real key among 2"
        );
        let e = step_summary(&[0.5, 0.5], shape, &[], 1).unwrap_err();
        assert_eq!(e.to_string(), "0 paddings for 1 sequences");
    }
}
