//! Branch-free scalar maths that LLVM vectorises.

/// Fused multiply-add when the target has FMA, else a multiply and an add. `FMA` is a const so
/// the baseline build never calls libm's slow software `fmaf`.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
