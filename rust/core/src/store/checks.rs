//! What a stored row must look like for every reader to read it back, as SQL conditions:
//! the view's triggers refuse a row that breaks one (naming the column), seed conversion
//! refuses a seed database holding one (naming the row), and an upgrade from physical schema
//! 1 moves such rows, which that version let in through the view, to `af_quarantine`.
//!
//! Two lists, because the seed's columns (text zones and phases, a `created_at` text, a
//! `schema_version`) are stored as attnfast's (codes, microseconds, `layout`). `{r}` in a
//! condition is the row (`NEW`, or a table alias).
//!
//! The conditions compare with `!=` one value at a time, never `NOT IN (...)`: SQLite builds
//! a lookup table for an `IN` list each time a trigger statement runs, which made the view's
//! triggers 40 times slower (515 µs a row for the checks, 13 µs without lists).

/// The longest `top_expert_ids` list, in entries (`af_numbers` has one row per entry).
pub const MAX_EXPERT_IDS: usize = 4096;

/// One rule: the column, a condition that is true when the row breaks it, what is expected.
pub struct Check {
    pub column: &'static str,
    pub bad: &'static str,
    pub expected: &'static str,
}

const fn check(column: &'static str, bad: &'static str, expected: &'static str) -> Check {
    Check {
        column,
        bad,
        expected,
    }
}

/// Rows in the seed's columns: written through the `fingerprints` view, or found in a seed
/// database being converted.
pub const SEED_ROW: &[Check] = &[
    check(
        "request_id",
        "typeof({r}.request_id) != 'text' OR length({r}.request_id) = 0",
        "non-empty text",
    ),
    check(
        "step",
        "typeof({r}.step) != 'integer' OR {r}.step < 0 OR {r}.step > 16777215",
        "an integer from 0 to 16777215",
    ),
    check(
        "fingerprint",
        "typeof({r}.fingerprint) != 'blob' OR length({r}.fingerprint) != 80",
        "a blob of 80 bytes (20 little-endian float32)",
    ),
    check(
        "schema_version",
        "{r}.schema_version IS NOT NULL AND (typeof({r}.schema_version) != 'integer' \
         OR ({r}.schema_version != 1 AND {r}.schema_version != 1001))",
        "1 (v1), 1001 (sglang) or NULL (v1)",
    ),
    check(
        "think_phase",
        "{r}.think_phase IS NOT NULL AND (typeof({r}.think_phase) != 'text' \
         OR ({r}.think_phase != 'think' AND {r}.think_phase != 'output' AND \
         {r}.think_phase != 'unknown'))",
        "think, output, unknown or NULL",
    ),
    check(
        "manifold_zone",
        "{r}.manifold_zone IS NOT NULL AND (typeof({r}.manifold_zone) != 'text' \
         OR {r}.manifold_zone NOT IN \
         ('syntax_floor', 'semantic_bridge', 'structure_ripple', 'unknown'))",
        "syntax_floor, semantic_bridge, structure_ripple, unknown or NULL",
    ),
    check(
        "created_at",
        "{r}.created_at IS NOT NULL AND (typeof({r}.created_at) != 'text' \
         OR julianday({r}.created_at) IS NULL)",
        "a UTC time as text, such as '2026-12-01 10:00:00', or NULL",
    ),
    check(
        "session_id",
        "(typeof({r}.session_id) != 'text' AND typeof({r}.session_id) != 'null')",
        "text or NULL",
    ),
    check(
        "token_text",
        "(typeof({r}.token_text) != 'text' AND typeof({r}.token_text) != 'null')",
        "text or NULL",
    ),
    check(
        "model_id",
        "(typeof({r}.model_id) != 'text' AND typeof({r}.model_id) != 'null')",
        "text or NULL",
    ),
    check(
        "token_id",
        "(typeof({r}.token_id) != 'integer' AND typeof({r}.token_id) != 'null')",
        "an integer or NULL",
    ),
    check(
        "segment_idx",
        "(typeof({r}.segment_idx) != 'integer' AND typeof({r}.segment_idx) != 'null')",
        "an integer or NULL",
    ),
    check(
        "cluster_id",
        "(typeof({r}.cluster_id) != 'integer' AND typeof({r}.cluster_id) != 'null')",
        "an integer or NULL",
    ),
    check(
        "manifold_confidence",
        "(typeof({r}.manifold_confidence) != 'real' AND \
        typeof({r}.manifold_confidence) != 'integer' AND \
        typeof({r}.manifold_confidence) != 'null') \
         OR abs({r}.manifold_confidence) > 1.7976931348623157e308",
        "a finite number or NULL",
    ),
    check(
        "cluster_probability",
        "(typeof({r}.cluster_probability) != 'real' AND \
        typeof({r}.cluster_probability) != 'integer' AND \
        typeof({r}.cluster_probability) != 'null') \
         OR abs({r}.cluster_probability) > 1.7976931348623157e308",
        "a finite number or NULL",
    ),
    check(
        "router_entropy",
        "(typeof({r}.router_entropy) != 'real' AND typeof({r}.router_entropy) != 'integer' AND \
        typeof({r}.router_entropy) != 'null') \
         OR abs({r}.router_entropy) > 1.7976931348623157e308",
        "a finite number or NULL",
    ),
    check(
        "expert_load_balance",
        "(typeof({r}.expert_load_balance) != 'real' AND \
        typeof({r}.expert_load_balance) != 'integer' AND \
        typeof({r}.expert_load_balance) != 'null') \
         OR abs({r}.expert_load_balance) > 1.7976931348623157e308",
        "a finite number or NULL",
    ),
    check(
        "sink_token_mass",
        "(typeof({r}.sink_token_mass) != 'real' AND typeof({r}.sink_token_mass) != 'integer' AND \
        typeof({r}.sink_token_mass) != 'null') \
         OR abs({r}.sink_token_mass) > 1.7976931348623157e308",
        "a finite number or NULL",
    ),
    check(
        "top_k_positions",
        "{r}.top_k_positions IS NOT NULL AND (typeof({r}.top_k_positions) != 'blob' \
         OR length({r}.top_k_positions) = 0 OR length({r}.top_k_positions) % 4 != 0)",
        "a non-empty blob of little-endian int32 (a multiple of 4 bytes) or NULL",
    ),
    check(
        "top_k_scores",
        "{r}.top_k_scores IS NOT NULL AND (typeof({r}.top_k_scores) != 'blob' \
         OR length({r}.top_k_scores) = 0 OR length({r}.top_k_scores) % 4 != 0)",
        "a non-empty blob of little-endian float32 (a multiple of 4 bytes) or NULL",
    ),
    check(
        "top_k_scores",
        "length({r}.top_k_scores) != length({r}.top_k_positions)",
        "one score per top_k_positions entry, when both are given",
    ),
    check(
        "capture_layer_ids",
        "{r}.capture_layer_ids IS NOT NULL AND (typeof({r}.capture_layer_ids) != 'blob' \
         OR length({r}.capture_layer_ids) = 0 OR length({r}.capture_layer_ids) % 4 != 0)",
        "a non-empty blob of little-endian int32 (a multiple of 4 bytes) or NULL",
    ),
    check(
        "top_expert_ids",
        "{r}.top_expert_ids IS NOT NULL AND (typeof({r}.top_expert_ids) != 'blob' \
         OR length({r}.top_expert_ids) = 0 OR length({r}.top_expert_ids) % 4 != 0 \
         OR length({r}.top_expert_ids) > 16384)",
        "a non-empty blob of at most 4096 little-endian int32 or NULL",
    ),
];

/// Rows of `af_fingerprints`, in attnfast's own columns: what the readers decode.
pub const STORED_ROW: &[Check] = &[
    check(
        "fingerprint",
        "typeof({r}.fingerprint) != 'blob' OR length({r}.fingerprint) != 80",
        "a blob of 80 bytes (20 little-endian float32)",
    ),
    check(
        "layout",
        "typeof({r}.layout) != 'integer' OR ({r}.layout != 1 AND {r}.layout != 1001)",
        "a layout code (1 or 1001)",
    ),
    check(
        "think_phase",
        "{r}.think_phase IS NOT NULL AND (typeof({r}.think_phase) != 'integer' \
         OR ({r}.think_phase != 0 AND {r}.think_phase != 1 AND {r}.think_phase != 2))",
        "a phase code (0, 1, 2) or NULL",
    ),
    check(
        "zone",
        "{r}.zone IS NOT NULL AND (typeof({r}.zone) != 'integer' \
         OR ({r}.zone != 0 AND {r}.zone != 1 AND {r}.zone != 2 AND {r}.zone != 3))",
        "a zone code (0..3) or NULL",
    ),
    check(
        "created_us",
        "typeof({r}.created_us) != 'integer'",
        "an integer time",
    ),
    check(
        "session_id",
        "(typeof({r}.session_id) != 'text' AND typeof({r}.session_id) != 'null')",
        "text or NULL",
    ),
    check(
        "token_text",
        "(typeof({r}.token_text) != 'text' AND typeof({r}.token_text) != 'null')",
        "text or NULL",
    ),
    check(
        "model_id",
        "(typeof({r}.model_id) != 'text' AND typeof({r}.model_id) != 'null')",
        "text or NULL",
    ),
    check(
        "token_id",
        "(typeof({r}.token_id) != 'integer' AND typeof({r}.token_id) != 'null')",
        "an integer or NULL",
    ),
    check(
        "segment_idx",
        "(typeof({r}.segment_idx) != 'integer' AND typeof({r}.segment_idx) != 'null')",
        "an integer or NULL",
    ),
    check(
        "cluster_id",
        "(typeof({r}.cluster_id) != 'integer' AND typeof({r}.cluster_id) != 'null')",
        "an integer or NULL",
    ),
    check(
        "manifold_confidence",
        "(typeof({r}.manifold_confidence) != 'real' AND \
        typeof({r}.manifold_confidence) != 'integer' AND \
        typeof({r}.manifold_confidence) != 'null')",
        "a number or NULL",
    ),
    check(
        "cluster_probability",
        "(typeof({r}.cluster_probability) != 'real' AND \
        typeof({r}.cluster_probability) != 'integer' AND \
        typeof({r}.cluster_probability) != 'null')",
        "a number or NULL",
    ),
    check(
        "router_entropy",
        "(typeof({r}.router_entropy) != 'real' AND typeof({r}.router_entropy) != 'integer' AND \
        typeof({r}.router_entropy) != 'null')",
        "a number or NULL",
    ),
    check(
        "expert_load_balance",
        "(typeof({r}.expert_load_balance) != 'real' AND \
        typeof({r}.expert_load_balance) != 'integer' AND \
        typeof({r}.expert_load_balance) != 'null')",
        "a number or NULL",
    ),
    check(
        "sink_token_mass",
        "(typeof({r}.sink_token_mass) != 'real' AND typeof({r}.sink_token_mass) != 'integer' AND \
        typeof({r}.sink_token_mass) != 'null')",
        "a number or NULL",
    ),
    check(
        "top_k_positions",
        "(typeof({r}.top_k_positions) != 'blob' AND typeof({r}.top_k_positions) != 'null') \
         OR length({r}.top_k_positions) % 4 != 0",
        "a blob of int32 or NULL",
    ),
    check(
        "top_k_scores",
        "(typeof({r}.top_k_scores) != 'blob' AND \
        typeof({r}.top_k_scores) != 'null') OR length({r}.top_k_scores) % 4 != 0",
        "a blob of float32 or NULL",
    ),
    check(
        "capture_layer_ids",
        "(typeof({r}.capture_layer_ids) != 'blob' AND typeof({r}.capture_layer_ids) != 'null') \
         OR length({r}.capture_layer_ids) % 4 != 0",
        "a blob of int32 or NULL",
    ),
    check(
        "top_expert_ids",
        "(typeof({r}.top_expert_ids) != 'blob' AND typeof({r}.top_expert_ids) != 'null') \
         OR length({r}.top_expert_ids) % 4 != 0 OR length({r}.top_expert_ids) > 16384",
        "a blob of at most 4096 int32 or NULL",
    ),
];

fn condition(c: &Check, row: &str) -> String {
    c.bad.replace("{r}", row)
}

/// The message of a broken rule, naming the seed's table and the column.
pub fn message(c: &Check) -> String {
    format!("fingerprints.{} must be {}", c.column, c.expected)
}

/// Trigger statements that abort, naming the column, when `row` (`NEW`) breaks a rule.
/// RAISE takes only a literal message, hence one statement per rule.
pub fn raise_statements(checks: &[Check], row: &str) -> String {
    checks
        .iter()
        .map(|c| {
            format!(
                "    SELECT RAISE(ABORT, '{}') WHERE {};\n",
                message(c).replace('\'', "''"),
                condition(c, row)
            )
        })
        .collect()
}

/// An SQL expression giving the first broken rule's message for `row`, or NULL.
pub fn first_problem(checks: &[Check], row: &str) -> String {
    let arms: String = checks
        .iter()
        .map(|c| {
            format!(
                " WHEN {} THEN '{}'",
                condition(c, row),
                message(c).replace('\'', "''")
            )
        })
        .collect();
    format!("(CASE{arms} END)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn problems_name_the_first_broken_rule() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE s (request_id, step, fingerprint, schema_version, think_phase,
                manifold_zone, created_at, session_id, token_text, model_id, token_id,
                segment_idx, cluster_id, manifold_confidence, cluster_probability,
                router_entropy, expert_load_balance, sink_token_mass, top_k_positions,
                top_k_scores, capture_layer_ids, top_expert_ids);",
        )
        .unwrap();
        let problem = |set: &str| -> Option<String> {
            conn.execute_batch("DELETE FROM s").unwrap();
            conn.execute(
                "INSERT INTO s (request_id, step, fingerprint) VALUES ('r', 1, zeroblob(80))",
                [],
            )
            .unwrap();
            if !set.is_empty() {
                conn.execute_batch(&format!("UPDATE s SET {set}")).unwrap();
            }
            conn.query_row(
                &format!("SELECT {} FROM s", first_problem(SEED_ROW, "s")),
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(problem(""), None);
        assert_eq!(problem("top_k_positions = x'01000000'"), None); // positions alone are fine
        let cases = [
            (
                "fingerprint = x'0102030405'",
                "fingerprints.fingerprint must be a blob of 80",
            ),
            ("step = -1", "fingerprints.step must be"),
            ("step = '3'", "fingerprints.step must be"),
            (
                "token_id = 'seven'",
                "fingerprints.token_id must be an integer",
            ),
            (
                "top_k_positions = x'010203'",
                "fingerprints.top_k_positions must be",
            ),
            (
                "top_k_positions = x'0100000002000000', top_k_scores = x'0000803f'",
                "fingerprints.top_k_scores must be one score per top_k_positions entry",
            ),
            (
                "created_at = 'yesterday'",
                "fingerprints.created_at must be",
            ),
            ("schema_version = 2", "fingerprints.schema_version must be"),
            (
                "manifold_confidence = 9e999",
                "fingerprints.manifold_confidence must be",
            ),
            ("request_id = ''", "fingerprints.request_id must be"),
        ];
        for (set, expected) in cases {
            let got = problem(set).unwrap_or_default();
            assert!(got.starts_with(expected), "{set}: {got}");
        }
    }
}
