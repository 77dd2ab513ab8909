//! Attention scores `(query . key) * scale` of one query against every key.
//!
//! Why a kernel of its own: head dimensions are small (16 to 128), so a dot product per key
//! spends most of its time summing its vector lanes. On AVX2 eight keys are done at once and
//! their eight lane vectors are summed together with `hadd`, a quarter of the shuffles.

use ndarray::ArrayView2;

use crate::fingerprint::fastmath::madd;

/// `row[k] = (query . keys[k]) * scale`. `FMA` is true only on the AVX2 and AVX-512 paths,
/// whose callers have checked that the CPU has AVX2 and FMA.
#[inline(always)]
pub(super) fn scores<const FMA: bool>(
    query: &[f32],
    keys: ArrayView2<'_, f32>,
    scale: f32,
    row: &mut [f32],
) {
    let d = query.len();
    let Some(flat) = keys.as_slice() else {
        // Keys whose rows are not contiguous (a transposed view): correct, slower.
        for (r, key) in row.iter_mut().zip(keys.rows()) {
            *r = key.iter().zip(query).map(|(k, q)| k * q).sum::<f32>() * scale;
        }
        return;
    };
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if FMA && d % 8 == 0 {
        // SAFETY: FMA is only true on paths chosen after detecting AVX2 and FMA.
        done = unsafe { blocks_avx2(query, flat, scale, row) };
    }
    for (r, key) in row[done..].iter_mut().zip(flat[done * d..].chunks_exact(d)) {
        *r = dot::<FMA>(query, key) * scale;
    }
}

/// Scores of the keys in whole blocks of eight; returns how many keys it did. `d` is a
/// multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn blocks_avx2(query: &[f32], keys: &[f32], scale: f32, row: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let d = query.len();
    let blocks = row.len() / 8;
    let scale = _mm256_set1_ps(scale);
    for (block, out) in keys
        .chunks_exact(8 * d)
        .zip(row.chunks_exact_mut(8))
        .take(blocks)
    {
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..d).step_by(8) {
            // SAFETY: c + 8 <= d, and every key of the block has d values.
            unsafe {
                let q = _mm256_loadu_ps(query.as_ptr().add(c));
                for (u, a) in acc.iter_mut().enumerate() {
                    let k = _mm256_loadu_ps(block.as_ptr().add(u * d + c));
                    *a = _mm256_fmadd_ps(q, k, *a);
                }
            }
        }
        // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]: two rounds
        // leave, per 128-bit half, four keys' partial sums; adding the halves finishes them.
        let h01 = _mm256_hadd_ps(acc[0], acc[1]);
        let h23 = _mm256_hadd_ps(acc[2], acc[3]);
        let h45 = _mm256_hadd_ps(acc[4], acc[5]);
        let h67 = _mm256_hadd_ps(acc[6], acc[7]);
        let h0123 = _mm256_hadd_ps(h01, h23);
        let h4567 = _mm256_hadd_ps(h45, h67);
        let low = _mm256_permute2f128_ps::<0x20>(h0123, h4567);
        let high = _mm256_permute2f128_ps::<0x31>(h0123, h4567);
        let sums = _mm256_mul_ps(_mm256_add_ps(low, high), scale);
        // SAFETY: out has 8 values.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sums) };
    }
    blocks * 8
}

const LANES: usize = 8;

/// A dot product in 8 independent lanes, which LLVM turns into vector multiply-adds.
#[inline(always)]
pub(super) fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        let x: &[f32; LANES] = x.try_into().expect("chunks_exact gives LANES");
        let y: &[f32; LANES] = y.try_into().expect("chunks_exact gives LANES");
        for i in 0..LANES {
            acc[i] = madd::<FMA>(x[i], y[i], acc[i]);
        }
    }
    for (i, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[i] = madd::<FMA>(*x, *y, acc[i]);
    }
    // A pairwise tree, which vectorises (a plain sum is a serial chain).
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::simd;

    #[test]
    fn every_path_matches_f64_dot_products() {
        for (n, d) in [(1, 8), (7, 16), (8, 16), (29, 64), (33, 12), (64, 128)] {
            let keys: Vec<f32> = (0..n * d)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.05)
                .collect();
            let query: Vec<f32> = (0..d).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.1).collect();
            let view = ArrayView2::from_shape((n, d), &keys).unwrap();
            let want: Vec<f64> = keys
                .chunks(d)
                .map(|k| {
                    k.iter()
                        .zip(&query)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * 0.5
                })
                .collect();
            let mut paths = vec![false];
            if simd::detected() >= simd::Level::Avx2Fma {
                paths.push(true);
            }
            for fma in paths {
                let mut row = vec![0.0f32; n];
                if fma {
                    scores::<true>(&query, view, 0.5, &mut row);
                } else {
                    scores::<false>(&query, view, 0.5, &mut row);
                }
                for (got, want) in row.iter().zip(&want) {
                    assert!((*got as f64 - want).abs() < 1e-5, "n={n} d={d} fma={fma}");
                }
            }
        }
    }
}
