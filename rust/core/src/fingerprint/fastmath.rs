//! Branch-free scalar maths that LLVM vectorises.

/// Fused multiply-add when the target has FMA, else a multiply and an add. `FMA` is a const so
/// the baseline build never calls libm's slow software `fmaf`.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Natural log for finite non-negative `x`: within 1.5e-7 + 1.2e-7 * |ln x| of the true value on
/// `[1e-38, 1e30]` (about one float32 ulp of the result). For `x == 0` it returns about -88 instead of -inf, so `x * ln(x)` is exactly 0,
/// which is the entropy convention `0 ln 0 = 0`; subnormals give a finite value whose product with
/// `x` is negligible. NaN and infinity give garbage: callers detect those through the row sum.
///
/// Why absolute error: entropy is `ln s - sum(a ln a) / s`, so an absolute error e in each `ln a`
/// moves the entropy by at most e (and the relative part by at most 1.2e-7 * entropy). A degree-5 remainder (fitted minimax on the reduced range)
/// is as accurate as float32 rounding of the result, and three multiply-adds cheaper than
/// Cephes' degree 8. The range reduction is integer-only (no compares or blends): subtracting
/// the bits of sqrt(1/2) before taking the exponent puts the mantissa in [sqrt(1/2), sqrt(2)).
#[inline(always)]
pub fn ln<const FMA: bool>(x: f32) -> f32 {
    const SQRT_HALF_BITS: i32 = 0x3f35_04f3;
    let bits = x.to_bits() as i32;
    let k = bits.wrapping_sub(SQRT_HALF_BITS) >> 23;
    let m = f32::from_bits(bits.wrapping_sub(k << 23) as u32) - 1.0;
    let z = m * m;
    // ln(1 + m) = m - m^2/2 + m^3 * R(m), R minimax on [sqrt(1/2) - 1, sqrt(2) - 1].
    let mut r = -0.102_233_36_f32;
    r = madd::<FMA>(r, m, 0.161_400_66);
    r = madd::<FMA>(r, m, -0.171_667_59);
    r = madd::<FMA>(r, m, 0.199_103_53);
    r = madd::<FMA>(r, m, -0.249_805_88);
    r = madd::<FMA>(r, m, 0.333_346_87);
    let t = madd::<FMA>(m, r, -0.5);
    let ln_m = madd::<FMA>(z, t, m);
    madd::<FMA>(k as f32, std::f32::consts::LN_2, ln_m)
}

/// `e^x` for `x <= 88`: within 2 float32 ulps of the true value for `x >= -87`, 0 below
/// (so `-inf` gives 0: a masked score), NaN for NaN. Cephes' `expf` polynomial with its
/// `floor` replaced by round-to-nearest through a magic constant, so the reduced argument is
/// in [-ln2/2, ln2/2] and the whole function is branch-free and vectorises without SSE4.1.
#[inline(always)]
pub fn exp<const FMA: bool>(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = if x < -87.0 { -87.0 } else { x };
    let xc = if xc > 88.0 { 88.0 } else { xc };
    let rounded = madd::<FMA>(xc, std::f32::consts::LOG2_E, ROUND);
    // The integer sits in the low mantissa bits: no float-to-int conversion (whose saturating
    // semantics keep LLVM from vectorising).
    let n_int = (rounded.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let n = rounded - ROUND;
    // x - n ln2, with ln2 split in two so that the first product is exact.
    let r = madd::<FMA>(n, -0.693_359_4, xc);
    let r = madd::<FMA>(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4_f32;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 0.166_666_65);
    p = madd::<FMA>(p, r, 0.5);
    let y = madd::<FMA>(p, r * r, r) + 1.0;
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    if x < -87.0 { 0.0 } else { y * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut x = -87.0f32;
        while x <= 88.0 {
            for got in [exp::<false>(x), exp::<true>(x)] {
                let want = (x as f64).exp();
                let rel = ((got as f64 - want) / want).abs();
                assert!(rel < 2.5e-7, "exp({x}) = {got}, want {want}, rel {rel:e}");
            }
            x += 0.013_7;
        }
        for x in [f32::NEG_INFINITY, -1000.0, -87.5] {
            assert_eq!(exp::<false>(x), 0.0);
            assert_eq!(exp::<true>(x), 0.0);
        }
        assert!(exp::<false>(f32::NAN).is_nan());
        assert_eq!(exp::<true>(0.0), 1.0);
    }

    #[test]
    fn ln_matches_std_over_many_magnitudes() {
        let mut x = 1e-37f32;
        while x < 1e30 {
            for scale in [1.0f32, 1.37, 2.5, 7.9] {
                let v = x * scale;
                for got in [ln::<false>(v), ln::<true>(v)] {
                    let want = (v as f64).ln();
                    // float32 rounding of ln(v) alone is up to half an ulp of |ln v|.
                    let err = (got as f64 - want).abs();
                    assert!(
                        err <= 1.5e-7 + 1.2e-7 * want.abs(),
                        "ln({v}) = {got}, want {want}"
                    );
                }
            }
            x *= 3.1;
        }
    }

    #[test]
    fn zero_times_ln_zero_is_zero() {
        assert_eq!(0.0 * ln::<false>(0.0), 0.0);
        assert!(ln::<true>(0.0) < -80.0);
        let tiny = f32::from_bits(1);
        assert!((tiny * ln::<false>(tiny)).abs() < 1e-40);
    }
}
