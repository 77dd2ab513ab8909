//! A softmax that also gives the row's `sum p ln p`, without a logarithm per key.
//!
//! With `x_k = s_k - max` and `e_k = exp(x_k)`, `p_k = e_k / S` and `ln p_k = x_k - ln S`, so
//! `sum p ln p = (sum e_k x_k) / S - ln S`: the entropy falls out of the shifted scores. The
//! fingerprint kernel would otherwise spend a polynomial `ln` on every probability.

use super::scores::dot;
use crate::fingerprint::fastmath;
use crate::fingerprint::kernel::lane_sum;

/// Lanes of the maximum search.
const LANES: usize = 8;
/// Shifted scores below this give `exp = 0` (a masked key); clamping them keeps `e * x` at 0
/// instead of `0 * -inf = NaN`.
const FLOOR: f32 = -88.0;

/// Turns `row` (scores) into probabilities in place and returns `sum p ln p`. `shifted` is
/// scratch space, resized to the row.
#[inline(always)]
pub(super) fn softmax<const FMA: bool>(
    row: &mut [f32],
    shifted: &mut Vec<f32>,
) -> Result<f32, &'static str> {
    const NOT_FINITE: &str = "the scores are not finite (NaN or infinity in the queries or keys)";
    // NaN never wins a comparison, so it does not raise the maximum; it shows up in the sum.
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        let chunk: &[f32; LANES] = chunk.try_into().expect("chunks_exact gives LANES");
        for i in 0..LANES {
            lanes[i] = if chunk[i] > lanes[i] {
                chunk[i]
            } else {
                lanes[i]
            };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    if max == f32::NEG_INFINITY {
        return Err(if row.iter().any(|v| v.is_nan()) {
            NOT_FINITE
        } else {
            "every key is masked"
        });
    }
    // Plain loops, which LLVM's loop vectoriser handles (an unrolled lane array around `exp`
    // was left scalar). `x < FLOOR` is false for NaN, so NaN goes on to poison the sum.
    shifted.clear();
    shifted.extend(row.iter().map(|&v| {
        let x = v - max;
        if x < FLOOR { FLOOR } else { x }
    }));
    for (v, &x) in row.iter_mut().zip(shifted.iter()) {
        *v = fastmath::exp::<FMA>(x);
    }
    let sum = lane_sum(row);
    if !(sum.is_finite() && sum > 0.0) {
        return Err(NOT_FINITE);
    }
    let weighted = dot::<FMA>(row, shifted);
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
    Ok(weighted * inv - sum.ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_and_entropy_match_f64() {
        let scores: Vec<f32> = (0..37).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.4).collect();
        for masked in [false, true] {
            let mut row = scores.clone();
            if masked {
                row[3] = f32::NEG_INFINITY;
                row[20] = f32::NEG_INFINITY;
            }
            let m = row.iter().copied().fold(f64::MIN, |a, b| a.max(b as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let total: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|v| v / total).collect();
            let want: f64 = p.iter().filter(|&&v| v > 0.0).map(|v| v * v.ln()).sum();
            for fma in [false, true] {
                let mut r = row.clone();
                let mut scratch = Vec::new();
                let xlogx = if fma {
                    softmax::<true>(&mut r, &mut scratch)
                } else {
                    softmax::<false>(&mut r, &mut scratch)
                }
                .unwrap();
                assert!((xlogx as f64 - want).abs() < 1e-5, "{xlogx} vs {want}");
                for (a, b) in r.iter().zip(&p) {
                    assert!((*a as f64 - b).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn masked_and_broken_rows_are_refused() {
        let mut scratch = Vec::new();
        let mut row = vec![f32::NEG_INFINITY; 4];
        assert_eq!(
            softmax::<false>(&mut row, &mut scratch),
            Err("every key is masked")
        );
        let mut row = vec![0.5, f32::NAN, 0.1];
        assert!(
            softmax::<false>(&mut row, &mut scratch)
                .unwrap_err()
                .contains("not finite")
        );
        let mut row = vec![f32::NAN; 3];
        assert!(
            softmax::<false>(&mut row, &mut scratch)
                .unwrap_err()
                .contains("not finite")
        );
    }
}
