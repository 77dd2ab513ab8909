//! What makes 20 floats a fingerprint of their layout, written twice from one list of rules:
//! in Rust for attnfast's own write paths (refused, naming the row), and as SQL for the paths
//! that run inside other programs' SQLite (the seed's tools writing through the `fingerprints`
//! view, seed conversion), where a bad vector is stored flagged `invalid` with zone `unknown`
//! rather than refused: the seed's sidecar has no way to handle a refusal. The two are
//! tested against each other.
//!
//! The rules:
//! - every value is finite and not negative (-0.0 is allowed);
//! - v1: the masses (0..3) sum to 1 and the histogram (4..12) sums to 1, within
//!   [`MASS_TOLERANCE`];
//! - SGLang's layout (`[local, mid, long, entropy / ln 16, hist16]`): the masses (0..3) and the
//!   16 histogram bins (4..20) each sum to at most 1 + [`MASS_TOLERANCE`] (its masses are top-k
//!   attention, which may hold less than the whole row).

use crate::fingerprint::FINGERPRINT_DIM;
use crate::layout::Layout;

/// How far a sum of masses may be from 1: float32 rounding is 1e-7, but producers that
/// accumulate float16 attention on a GPU land within about 1e-4.
pub const MASS_TOLERANCE: f64 = 1e-3;

/// ln 16: SGLang's entropy is divided by it; the store's means are in nats.
pub const LN_16: f64 = 2.772_588_722_239_781;

/// The index ranges whose sums the rules check, per layout: `(range, exact)`, where `exact`
/// means "sums to 1" and otherwise "sums to at most 1".
fn sums(layout: Layout) -> [(std::ops::Range<usize>, bool, &'static str); 2] {
    match layout {
        Layout::V1 => [(0..3, true, "masses"), (4..12, true, "histogram")],
        Layout::Sglang => [(0..3, false, "masses"), (4..20, false, "histogram")],
    }
}

/// Why `fp` is not a vector of `layout`, or `None` when it is one.
pub fn problem(layout: Layout, fp: &[f32]) -> Option<String> {
    debug_assert_eq!(fp.len(), FINGERPRINT_DIM);
    if let Some(i) = fp.iter().position(|v| !v.is_finite()) {
        return Some(format!("has {} at index {i}", fp[i]));
    }
    if let Some(i) = fp.iter().position(|&v| v < 0.0) {
        return Some(format!("has a negative value ({}) at index {i}", fp[i]));
    }
    for (range, exact, what) in sums(layout) {
        let (lo, hi) = (range.start, range.end - 1);
        let sum: f64 = fp[range].iter().map(|&v| f64::from(v)).sum();
        if exact && (sum - 1.0).abs() > MASS_TOLERANCE {
            return Some(format!(
                "has {what} (indices {lo}..{hi}) summing to {sum}, not 1 (tolerance \
                 {MASS_TOLERANCE})"
            ));
        }
        if !exact && sum > 1.0 + MASS_TOLERANCE {
            return Some(format!(
                "has {what} (indices {lo}..{hi}) summing to {sum}, more than 1"
            ));
        }
    }
    None
}

/// `(local mass, long mass, entropy in nats)` of a valid vector, for `request_summary`'s
/// means: each layout's own fields.
pub fn summary_fields(layout: Layout, fp: &[f32]) -> (f64, f64, f64) {
    let entropy = f64::from(fp[3]);
    let entropy = match layout {
        Layout::V1 => entropy,
        Layout::Sglang => entropy * LN_16,
    };
    (f64::from(fp[0]), f64::from(fp[2]), entropy)
}

// --- the same rules in SQL ---------------------------------------------------------------
//
// SQLite has no function that reads a float from bytes, and the triggers run in whatever
// SQLite the seed's tools link (3.24 and later must work: no unhex, no math functions, no
// window functions or CTEs inside triggers). So a blob is read byte by byte: a join of the 80
// byte offsets (`af_numbers`) with a table of the 256 one-byte blobs and their values
// (`af_byte`), grouped into the 20 little-endian words, each rebuilt into a float from its
// sign, exponent and mantissa with integer shifts. This costs about 80 us a vector; reading
// nibbles out of `hex()` cost 250 us, since every SQL function call costs about a
// microsecond. The values are exact (an integer below 2^24 times a power of two is exact in
// a double), except values below 2^-62, which read as 0: no sum can move across a tolerance
// by that much.

fn nibble(h: &str, pos: usize) -> String {
    format!("(instr('0123456789ABCDEF', substr({h}, {pos}, 1)) - 1)")
}

/// Byte `j` (0 = least significant) of the 4-byte little-endian value at byte offset `at`.
fn byte(h: &str, at: usize, j: usize) -> String {
    let pos = 2 * (at + j) + 1;
    format!("({} * 16 + {})", nibble(h, pos), nibble(h, pos + 1))
}

/// The signed int32 at byte offset `at` of the blob whose hex text is `h` (for the few ids
/// read from `top_expert_ids`).
pub fn sql_i32(h: &str, at: usize) -> String {
    let u = format!(
        "({} | ({} << 8) | ({} << 16) | ({} << 24))",
        byte(h, at, 0),
        byte(h, at, 1),
        byte(h, at, 2),
        byte(h, at, 3)
    );
    format!("(CASE WHEN {u} >= 2147483648 THEN {u} - 4294967296 ELSE {u} END)")
}

/// The int32 at index `i` of a blob, where `i` is an SQL expression (a row of `af_numbers`).
pub fn sql_i32_at(blob: &str, i: &str) -> String {
    let h = format!("hex(substr({blob}, 4 * {i} + 1, 4))");
    sql_i32(&h, 0)
}

/// The rows of `af_byte`, for the schema.
pub fn byte_table_sql() -> String {
    let rows: Vec<String> = (0..256).map(|b| format!("(x'{b:02X}', {b})")).collect();
    format!(
        "CREATE TABLE IF NOT EXISTS af_byte (k BLOB PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;
         INSERT OR IGNORE INTO af_byte (k, v) VALUES {};",
        rows.join(", ")
    )
}

/// A one-row query over the 80-byte vector `blob` of layout code `layout` (SQL expressions):
/// `bad` (1 when the vector breaks its layout's rules), `local`, `long`, `entropy` (the
/// summary fields), and for v1 vectors `rule_zone` and `rule_confidence` (`zone::zone_of`,
/// computed in doubles where Rust rounds the confidence to float32).
pub fn sql_decoded(blob: &str, layout: &str) -> String {
    let words = format!(
        "SELECT n.i / 4 AS j, sum(b.v << (8 * (n.i % 4))) AS u
         FROM af_numbers n JOIN af_byte b ON b.k = substr({blob}, n.i + 1, 1)
         WHERE n.i < 80 GROUP BY j"
    );
    let parts = format!(
        "SELECT j, (u >> 31) AS s, ((u >> 23) & 255) AS e, (u & 8388607) AS m FROM ({words})"
    );
    let values = format!(
        "SELECT j, s, e, m, CASE WHEN e < 65 THEN 0.0 WHEN e > 189 THEN 1e30 \
             WHEN e >= 127 THEN (m + 8388608) * (1 << (e - 127)) / 8388608.0 \
             ELSE (m + 8388608) / (8388608.0 * (1 << (127 - e))) END AS v \
         FROM ({parts})"
    );
    let at = |j: usize| format!("total(CASE WHEN j = {j} THEN v END) AS v{j}");
    let over = |lo: usize, hi: usize, what: &str, name: &str| {
        format!("total(CASE WHEN j BETWEEN {lo} AND {hi} THEN {what} END) AS {name}")
    };
    // Summed in j order, as Rust sums.
    let sums = format!(
        "SELECT max(e = 255 OR (s = 1 AND (e > 0 OR m > 0))) AS broken, {}, {}, {}, {}, {}, {}, \
             {}, {}
         FROM ({values}) LIMIT -1",
        at(0),
        at(1),
        at(2),
        at(3),
        over(0, 2, "v", "masses"),
        over(4, 11, "v", "hist"),
        over(4, 19, "v", "hist16"),
        over(4, 11, "v * v", "hist_squares"),
    );
    let rule = |l: Layout| match l {
        Layout::V1 => format!(
            "abs(masses - 1.0) > {MASS_TOLERANCE:e} OR abs(hist - 1.0) > {MASS_TOLERANCE:e}"
        ),
        Layout::Sglang => format!(
            "masses > {limit} OR hist16 > {limit}",
            limit = 1.0 + MASS_TOLERANCE
        ),
    };
    // The population variance of the 8 histogram values, as zone.rs's rule needs it.
    let variance = "(hist_squares / 8.0 - (hist / 8.0) * (hist / 8.0))";
    let floor = "v0 > 0.5 AND v3 < 2.5";
    let ripple = format!("v2 > 0.25 AND {variance} > 0.1");
    format!(
        "SELECT (broken OR CASE {layout} WHEN {v1} THEN {v1_rule} WHEN {sg} THEN {sg_rule} \
                 ELSE 1 END) AS bad,
             v0 AS local, v2 AS long,
             CASE {layout} WHEN {sg} THEN v3 * {LN_16} ELSE v3 END AS entropy,
             CASE WHEN {layout} != {v1} THEN NULL WHEN {floor} THEN 0 WHEN {ripple} THEN 2 \
                 ELSE 1 END AS rule_zone,
             CASE WHEN {layout} != {v1} THEN NULL
                  WHEN {floor} THEN min(1.0, v0 * (1.0 - v3 / 4.0))
                  WHEN {ripple} THEN min(1.0, v2 + {variance})
                  WHEN v0 + v1 + v2 > 0 THEN v1 / (v0 + v1 + v2) ELSE 0.0 END AS rule_confidence
         FROM ({sums})",
        v1 = Layout::V1.code(),
        sg = Layout::Sglang.code(),
        v1_rule = rule(Layout::V1),
        sg_rule = rule(Layout::Sglang),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rusqlite::Connection;

    fn v1() -> [f32; 20] {
        let mut fp = [0.0f32; 20];
        fp[0] = 0.7;
        fp[1] = 0.2;
        fp[2] = 0.1;
        fp[3] = 1.5;
        fp[4] = 0.5;
        fp[5] = 0.5;
        fp[12] = 2.0;
        fp
    }

    type Decoded = (bool, f64, f64, f64, Option<u8>, Option<f64>);

    fn sql_decode(conn: &Connection, layout: Layout, fp: &[f32]) -> Decoded {
        let blob: Vec<u8> = fp.iter().flat_map(|v| v.to_le_bytes()).collect();
        // Cached: preparing the decoder costs far more than running it.
        conn.prepare_cached(&format!(
            "SELECT bad, local, long, entropy, rule_zone, rule_confidence FROM ({})",
            sql_decoded("?2", "?1")
        ))
        .unwrap()
        .query_row(rusqlite::params![layout.code(), blob], |r| {
            Ok((
                r.get::<_, i64>(0)? != 0,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
    }

    fn sql_bad(conn: &Connection, layout: Layout, fp: &[f32]) -> (bool, f64, f64, f64) {
        let d = sql_decode(conn, layout, fp);
        (d.0, d.1, d.2, d.3)
    }

    fn connection() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&byte_table_sql()).unwrap();
        conn.execute_batch(
            "CREATE TABLE af_numbers (i INTEGER PRIMARY KEY);
             WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 79)
             INSERT INTO af_numbers SELECT i FROM n;",
        )
        .unwrap();
        conn
    }

    thread_local! {
        static CONN: Connection = connection();
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(problem(Layout::V1, &v1()), None);
        let mut fp = v1();
        fp[7] = f32::NAN;
        assert!(problem(Layout::V1, &fp).unwrap().contains("NaN at index 7"));
        let mut fp = v1();
        fp[9] = -0.25;
        assert!(
            problem(Layout::V1, &fp)
                .unwrap()
                .contains("negative value (-0.25) at index 9")
        );
        let mut fp = v1();
        fp[0] = 0.2;
        let p = problem(Layout::V1, &fp).unwrap();
        assert!(
            p.contains("masses (indices 0..2)") && p.contains("not 1"),
            "{p}"
        );
        let mut fp = v1();
        fp[6] = 0.5;
        assert!(
            problem(Layout::V1, &fp)
                .unwrap()
                .contains("histogram (indices 4..11)")
        );
        // The same vector is fine as SGLang's layout (its histogram may hold less than 1) ...
        let mut fp = v1();
        fp[4] = 0.1;
        fp[12] = 0.0;
        assert!(problem(Layout::V1, &fp).is_some());
        assert_eq!(problem(Layout::Sglang, &fp), None);
        // ... but not when its bins hold more than the whole row.
        fp[15] = 0.95;
        assert!(
            problem(Layout::Sglang, &fp)
                .unwrap()
                .contains("more than 1")
        );
        let mut fp = v1();
        fp[0] = -0.0;
        fp[1] = 0.9;
        assert_eq!(problem(Layout::V1, &fp), None, "-0.0 is not negative");
    }

    #[test]
    fn sql_reads_floats_exactly() {
        let conn = connection();
        let mut fp = v1();
        fp[0] = 0.123_456_78;
        fp[2] = 3.0e-9;
        fp[3] = 12.75;
        let (bad, local, long, entropy) = sql_bad(&conn, Layout::V1, &fp);
        assert!(bad, "the masses no longer sum to 1");
        assert_eq!(local, f64::from(fp[0]));
        assert_eq!(long, f64::from(fp[2]));
        assert_eq!(entropy, 12.75);
        let (_, _, _, entropy) = sql_bad(&conn, Layout::Sglang, &fp);
        assert!((entropy - 12.75 * LN_16).abs() < 1e-12);
        let ids: Vec<i64> = [7, -1, i32::MIN, i32::MAX, 0]
            .iter()
            .map(|&v: &i32| {
                let blob = v.to_le_bytes().to_vec();
                conn.query_row(&format!("SELECT {}", sql_i32_at("?1", "0")), [blob], |r| {
                    r.get(0)
                })
                .unwrap()
            })
            .collect();
        assert_eq!(
            ids,
            vec![7, -1, i64::from(i32::MIN), i64::from(i32::MAX), 0]
        );
    }

    fn any_vector() -> impl Strategy<Value = Vec<f32>> {
        prop_oneof![
            // Near-valid v1 vectors: masses and histogram normalised, then perhaps nudged.
            (
                proptest::collection::vec(0.0f32..1.0, 20),
                proptest::option::of((0usize..20, -0.01f32..0.01))
            )
                .prop_map(|(mut v, nudge)| {
                    for range in [0..3, 4..12] {
                        let s: f32 = v[range.clone()].iter().sum::<f32>().max(1e-6);
                        v[range].iter_mut().for_each(|x| *x /= s);
                    }
                    if let Some((i, d)) = nudge {
                        v[i] += d;
                    }
                    v
                }),
            // Arbitrary bit patterns: NaN, infinity, subnormals, negatives.
            proptest::collection::vec(any::<u32>().prop_map(f32::from_bits), 20),
            proptest::collection::vec(-2.0f32..2.0, 20),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]
        #[test]
        fn sql_and_rust_agree(fp in any_vector(), sglang in any::<bool>()) {
            let layout = if sglang { Layout::Sglang } else { Layout::V1 };
            let (bad, local, long, _, zone, confidence) =
                CONN.with(|conn| sql_decode(conn, layout, &fp));
            prop_assert_eq!(bad, problem(layout, &fp).is_some(), "{:?}", fp);
            // Values below 2^-62 read as 0 in SQL (see above).
            let read = |v: f32| if v.abs() < 2f32.powi(-62) { 0.0 } else { f64::from(v) };
            if !bad {
                prop_assert_eq!(local, read(fp[0]));
                prop_assert_eq!(long, read(fp[2]));
                if layout == Layout::V1 {
                    let (z, c) = crate::zone::zone_of(fp.as_slice().try_into().unwrap());
                    // SQL's variance is E[h^2] - E[h]^2, Rust's the mean squared deviation:
                    // they may differ in the last bits, so not at the threshold itself.
                    let h = &fp[4..12];
                    let mean = h.iter().map(|&x| f64::from(x)).sum::<f64>() / 8.0;
                    let var = h.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / 8.0;
                    if (var - 0.1).abs() > 1e-12 {
                        prop_assert_eq!(zone, Some(z as u8));
                        prop_assert!((confidence.unwrap() - f64::from(c)).abs() < 1e-6);
                    }
                } else {
                    prop_assert_eq!(zone, None);
                }
            }
        }
    }
}
