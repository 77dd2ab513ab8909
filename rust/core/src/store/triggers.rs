//! The triggers, generated here because they share SQL with each other and with the writer
//! (the summary refresh, the vector rules, the column checks). They keep the store right for
//! writes made with SQL, by any SQLite:
//! - `INSERT INTO fingerprints` (the seed's sidecar): checked, then stored with the writer's
//!   bookkeeping; a repeated `(request_id, step)` is dropped and counted, even under
//!   `INSERT OR REPLACE`.
//! - `UPDATE fingerprints SET ...` and `DELETE FROM fingerprints WHERE ...` (a discovery job
//!   writing cluster ids back, a cleanup): delegated to `af_fingerprints`.
//! - updates and deletes of `af_fingerprints` rows, by the above or directly: the hourly and
//!   daily counts, the per-layout and invalid counts, and the request summaries follow.
//!
//! The bookkeeping of an added row lives in an `AFTER INSERT` trigger on `af_fingerprints`,
//! which every connection but the writer's fires: the writer turns triggers off on its own
//! connection (`SQLITE_DBCONFIG_ENABLE_TRIGGER`) and keeps the same tables per transaction,
//! far faster than a trigger per row (see summary.rs).

use super::checks::{SEED_ROW, raise_statements};
use super::schema::SPARSE_COLUMNS;
use super::summary::{
    PREVIEW_CHARS, PREVIEW_STEPS, ensure_sql, id_range, preview_sql, refresh_sql,
};
use super::vectors::{sql_decoded, sql_i32, sql_i32_at};

/// Every trigger attnfast creates, for dropping before an upgrade recreates them.
pub const NAMES: [&str; 8] = [
    "af_fingerprints_insert_through_view",
    "af_fingerprints_insert",
    "af_fingerprints_update_through_view",
    "af_fingerprints_delete_through_view",
    "af_fingerprints_update",
    "af_fingerprints_delete",
    // Names used by physical schema 1.
    "af_fingerprints_counts_update",
    "af_fingerprints_sparse_update",
];
const SCHEMA_1_EXTRA: &str = "af_fingerprints_counts_delete";

/// `DROP TRIGGER` for every trigger of this and earlier versions.
pub fn drop_all() -> String {
    NAMES
        .iter()
        .chain(std::iter::once(&SCHEMA_1_EXTRA))
        .map(|n| format!("DROP TRIGGER IF EXISTS {n};\n"))
        .collect()
}

const ZONE_CODE: &str = "CASE {z} WHEN 'syntax_floor' THEN 0 WHEN 'semantic_bridge' THEN 1 \
    WHEN 'structure_ripple' THEN 2 WHEN 'unknown' THEN 3 END";
const PHASE_CODE: &str =
    "CASE {p} WHEN 'think' THEN 0 WHEN 'output' THEN 1 WHEN 'unknown' THEN 2 END";

fn zone_code(z: &str) -> String {
    ZONE_CODE.replace("{z}", z)
}

fn phase_code(p: &str) -> String {
    PHASE_CODE.replace("{p}", p)
}

/// A seed-style `created_at` text as microseconds. julianday rather than unixepoch(): the
/// seed's tools run on SQLite builds older than 3.38. Rounded to the millisecond, which a
/// julianday double holds exactly.
fn created_us(t: &str) -> String {
    format!(
        "CAST(round((julianday(coalesce({t}, 'now')) - 2440587.5) * 86400000) AS INTEGER) * 1000"
    )
}

/// The first expert id of the blob `b` (an SQL expression for a column or a subquery's
/// column), or NULL.
fn first_expert(b: &str) -> String {
    let h = format!("hex(substr({b}, 1, 4))");
    format!(
        "(CASE WHEN {b} IS NULL OR length({b}) < 4 THEN NULL ELSE {} END)",
        sql_i32(&h, 0)
    )
}

/// Whether `a` then `b` is a cluster transition (both assigned, different).
fn transition(a: &str, b: &str) -> String {
    format!("coalesce({a} >= 0 AND {b} >= 0 AND {a} != {b}, 0)")
}

/// Whether `a` then `b` is an expert switch.
fn switch(a: &str, b: &str) -> String {
    format!("coalesce({a} != {b}, 0)")
}

/// The stored rows just before and after id `x` of request `k`: a derived table of their
/// cluster ids and first experts (`pc`, `nc`, `pe`, `ne`).
fn neighbours(k: &str, x: &str) -> String {
    let (lo, hi) = id_range(k);
    let prev = format!(
        "(SELECT cluster_id AS c, top_expert_ids AS b FROM af_fingerprints \
         WHERE id >= {lo} AND id < {x} ORDER BY id DESC LIMIT 1)"
    );
    let next = format!(
        "(SELECT cluster_id AS c, top_expert_ids AS b FROM af_fingerprints \
         WHERE id > {x} AND id <= {hi} ORDER BY id LIMIT 1)"
    );
    format!(
        "(SELECT (SELECT c FROM {prev}) AS pc, (SELECT c FROM {next}) AS nc, \
         (SELECT {pe} FROM {prev}) AS pe, (SELECT {ne} FROM {next}) AS ne)",
        pe = first_expert("b"),
        ne = first_expert("b"),
    )
}

/// The decoded vector of row `row` of `af_fingerprints` (NEW or OLD), a one-row table.
fn decoded(row: &str) -> String {
    format!(
        "({})",
        sql_decoded(&format!("{row}.fingerprint"), &format!("{row}.layout"))
    )
}

/// Adds (`sign` = "+") or removes ("-") row `r`'s contribution to its request's counts.
/// `r` is NEW or OLD of `af_fingerprints`.
fn stats_counts(r: &str, sign: &str) -> String {
    format!(
        "UPDATE af_request_stats SET
            row_count = row_count {sign} 1,
            think = think {sign} ({r}.think_phase IS 0),
            output = output {sign} ({r}.think_phase IS 1),
            zone0 = zone0 {sign} ({r}.zone IS 0),
            zone1 = zone1 {sign} ({r}.zone IS 1),
            zone2 = zone2 {sign} ({r}.zone IS 2),
            zone3 = zone3 {sign} ({r}.zone IS 3 OR {r}.zone IS NULL),
            router_count = router_count {sign} ({r}.router_entropy IS NOT NULL),
            router_sum = router_sum {sign} coalesce({r}.router_entropy, 0)
         WHERE request_key = {r}.id >> 24;
    "
    )
}

/// Adds or removes row `r`'s vector from its request's means (valid rows only). `d` is the
/// decoded vector, a one-row table.
fn stats_vector(r: &str, sign: &str, d: &str) -> String {
    format!(
        "UPDATE af_request_stats SET (measured, local_sum, long_sum, entropy_sum) = (
            SELECT measured {sign} 1, local_sum {sign} d.local, long_sum {sign} d.long,
                   entropy_sum {sign} d.entropy
            FROM {d} d)
         WHERE request_key = {r}.id >> 24 AND NOT {r}.invalid;
    "
    )
}

/// Adds or removes row `r`'s cluster and experts from its request's tallies.
fn tallies(r: &str, sign: &str) -> String {
    let expert = sql_i32_at(&format!("{r}.top_expert_ids"), "n.i");
    if sign == "+" {
        format!(
            "INSERT INTO af_request_clusters (request_key, cluster_id, count)
             SELECT {r}.id >> 24, {r}.cluster_id, 1 WHERE {r}.cluster_id >= 0
             ON CONFLICT (request_key, cluster_id) DO UPDATE SET count = count + 1;
             INSERT INTO af_request_experts (request_key, expert_id, count)
             SELECT {r}.id >> 24, {expert}, 1 FROM af_numbers n
             WHERE n.i < length({r}.top_expert_ids) / 4
             ON CONFLICT (request_key, expert_id) DO UPDATE SET count = count + 1;
    "
        )
    } else {
        format!(
            "UPDATE af_request_clusters SET count = count - 1
             WHERE request_key = {r}.id >> 24 AND cluster_id = {r}.cluster_id;
             UPDATE af_request_experts SET count = count - (SELECT count(*) FROM af_numbers n
                 WHERE n.i < length({r}.top_expert_ids) / 4 AND {expert} = expert_id)
             WHERE request_key = {r}.id >> 24 AND {r}.top_expert_ids IS NOT NULL;
             DELETE FROM af_request_clusters WHERE request_key = {r}.id >> 24 AND count <= 0;
             DELETE FROM af_request_experts WHERE request_key = {r}.id >> 24 AND count <= 0;
    "
        )
    }
}

/// The hourly zone and daily cluster counts, added to or taken from for row `r`.
fn hourly(r: &str, sign: &str) -> String {
    if sign == "+" {
        format!(
            "INSERT INTO af_zone_hourly (hour, zone, count, confidence_sum, confidence_count)
             SELECT {r}.created_us / 3600000000, {r}.zone, 1, coalesce({r}.manifold_confidence, 0),
                    {r}.manifold_confidence IS NOT NULL
             WHERE {r}.zone IS NOT NULL
             ON CONFLICT (hour, zone) DO UPDATE SET
                 count = count + 1,
                 confidence_sum = confidence_sum + excluded.confidence_sum,
                 confidence_count = confidence_count + excluded.confidence_count;
             INSERT INTO af_cluster_daily (day, cluster_id, count)
             SELECT {r}.created_us / 86400000000, {r}.cluster_id, 1 WHERE {r}.cluster_id >= 0
             ON CONFLICT (day, cluster_id) DO UPDATE SET count = count + 1;
             INSERT INTO af_hour_ids (hour, min_id, max_id)
             SELECT {r}.created_us / 3600000000, {r}.id, {r}.id WHERE true
             ON CONFLICT (hour) DO UPDATE SET
                 min_id = min(min_id, excluded.min_id), max_id = max(max_id, excluded.max_id);
    "
        )
    } else {
        format!(
            "UPDATE af_zone_hourly SET count = count - 1,
                 confidence_sum = confidence_sum - coalesce({r}.manifold_confidence, 0),
                 confidence_count = confidence_count - ({r}.manifold_confidence IS NOT NULL)
             WHERE hour = {r}.created_us / 3600000000 AND zone = {r}.zone;
             UPDATE af_cluster_daily SET count = count - 1
             WHERE day = {r}.created_us / 86400000000 AND cluster_id = {r}.cluster_id;
    "
        )
    }
}

/// The store-wide counters, for row `r` added or removed.
fn meta(r: &str, sign: &str) -> String {
    format!(
        "UPDATE af_meta SET value = value {sign} 1 WHERE key = 'rows';
         UPDATE af_meta SET value = value {sign} {r}.invalid WHERE key = 'invalid_rows';
         INSERT INTO af_meta (key, value) VALUES ('rows_layout:' || {r}.layout, {sign}1)
         ON CONFLICT (key) DO UPDATE SET value = value {sign} 1;
    "
    )
}

/// The `has:<column>` marks for row `r` (see schema::SPARSE_COLUMNS).
fn sparse_marks(r: &str) -> String {
    SPARSE_COLUMNS
        .iter()
        .map(|c| {
            format!(
                "    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:{c}', 1 \
                 WHERE {r}.{c} IS NOT NULL;\n"
            )
        })
        .collect()
}

/// Bookkeeping of an added `af_fingerprints` row `n` (NEW), on every connection but the
/// writer's.
fn after_insert() -> String {
    let n = "NEW";
    let k = format!("({n}.id >> 24)");
    let nb = neighbours(&k, &format!("{n}.id"));
    let ne = first_expert(&format!("{n}.top_expert_ids"));
    format!(
        "CREATE TRIGGER IF NOT EXISTS af_fingerprints_insert
AFTER INSERT ON af_fingerprints
BEGIN
{meta}{hourly}{marks}
    INSERT INTO af_request_stats (request_key) VALUES ({k}) ON CONFLICT DO NOTHING;
    {counts}{vector}{tallies}
    UPDATE af_request_stats SET
        cluster_transitions = cluster_transitions + (SELECT {t1} + {t2} - {t3} FROM {nb}),
        expert_switches = expert_switches + (SELECT {s1} + {s2} - {s3} FROM {nb})
    WHERE request_key = {k};
    UPDATE af_request_stats SET preview = substr(preview || coalesce({n}.token_text, ''), 1,
            {PREVIEW_CHARS}),
        preview_rows = preview_rows + 1, preview_end = {n}.id
    WHERE request_key = {k} AND preview_end < {n}.id AND preview_rows < {PREVIEW_STEPS};
    {preview}
    {ensure}
    {refresh}
END;
",
        meta = meta(n, "+"),
        hourly = hourly(n, "+"),
        marks = sparse_marks(n),
        counts = stats_counts(n, "+"),
        // A row from the view was decoded already (af_decoded); one inserted directly is
        // decoded here.
        vector = stats_vector(
            n,
            "+",
            &format!(
                "(SELECT local, long, entropy FROM af_decoded WHERE id = {n}.id
                  UNION ALL SELECT local, long, entropy FROM {d}
                  WHERE NOT EXISTS (SELECT 1 FROM af_decoded WHERE id = {n}.id))",
                d = decoded(n)
            )
        ),
        tallies = tallies(n, "+"),
        t1 = transition("pc", &format!("{n}.cluster_id")),
        t2 = transition(&format!("{n}.cluster_id"), "nc"),
        t3 = transition("pc", "nc"),
        s1 = switch("pe", &ne),
        s2 = switch(&ne, "ne"),
        s3 = switch("pe", "ne"),
        preview = preview_sql(&k, &format!("AND preview_end > {n}.id")),
        ensure = ensure_sql(&k),
        refresh = refresh_sql(&k),
    )
}

/// The seed's columns of the view, as `af_fingerprints` values, from `n` (NEW of the view).
/// `bad` says whether the vector breaks its layout's rules; `rule_zone` and
/// `rule_confidence` are its rule zone (`vectors::sql_decoded`), used only for a v1 row given
/// no zone.
fn stored_values(
    n: &str,
    bad: &str,
    rule_zone: &str,
    rule_confidence: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("session_id", format!("{n}.session_id")),
        ("token_id", format!("{n}.token_id")),
        ("token_text", format!("{n}.token_text")),
        ("think_phase", phase_code(&format!("{n}.think_phase"))),
        ("segment_idx", format!("coalesce({n}.segment_idx, 0)")),
        ("fingerprint", format!("{n}.fingerprint")),
        ("invalid", bad.to_owned()),
        // As the writer: an invalid row is unknown; a v1 row without a zone gets the rule
        // zone (and its confidence, unless one is given).
        (
            "zone",
            format!(
                "CASE WHEN {bad} THEN 3 WHEN {n}.manifold_zone IS NULL THEN {rule_zone} \
                 ELSE {} END",
                zone_code(&format!("{n}.manifold_zone"))
            ),
        ),
        (
            "manifold_confidence",
            format!(
                "CASE WHEN {bad} THEN NULL WHEN {n}.manifold_zone IS NULL \
                 THEN coalesce({n}.manifold_confidence, {rule_confidence}) \
                 ELSE {n}.manifold_confidence END"
            ),
        ),
        ("cluster_id", format!("{n}.cluster_id")),
        ("cluster_probability", format!("{n}.cluster_probability")),
        ("top_expert_ids", format!("{n}.top_expert_ids")),
        ("router_entropy", format!("{n}.router_entropy")),
        ("expert_load_balance", format!("{n}.expert_load_balance")),
        ("top_k_positions", format!("{n}.top_k_positions")),
        ("top_k_scores", format!("{n}.top_k_scores")),
        ("sink_token_mass", format!("{n}.sink_token_mass")),
        ("capture_layer_ids", format!("{n}.capture_layer_ids")),
        ("layout", format!("coalesce({n}.schema_version, 1)")),
        ("model_id", format!("{n}.model_id")),
    ]
}

fn insert_through_view() -> String {
    let id = "(SELECT request_key * 16777216 + NEW.step FROM af_requests \
              WHERE request_id = NEW.request_id)";
    let values = stored_values("NEW", "d.bad", "d.rule_zone", "d.rule_confidence");
    let columns: Vec<&str> = values.iter().map(|(c, _)| *c).collect();
    let exprs: Vec<String> = values.into_iter().map(|(_, e)| e).collect();
    format!(
        "CREATE TRIGGER IF NOT EXISTS af_fingerprints_insert_through_view
INSTEAD OF INSERT ON fingerprints
BEGIN
{checks}
    -- No statement here may meet a plain conflict: an outer INSERT OR REPLACE would turn it
    -- into a replace (upserts keep their DO clause). So the request row is added only when
    -- missing, and a duplicate is counted and then dropped with RAISE(IGNORE).
    INSERT INTO af_requests (request_id) SELECT NEW.request_id
    WHERE NOT EXISTS (SELECT 1 FROM af_requests WHERE request_id = NEW.request_id);
    UPDATE af_meta SET value = value + 1
    WHERE key = 'duplicates_rejected' AND EXISTS (SELECT 1 FROM af_fingerprints WHERE id = {id});
    SELECT RAISE(IGNORE) WHERE EXISTS (SELECT 1 FROM af_fingerprints WHERE id = {id});
    -- The vector, decoded once: the row's flag and zone, and the insert trigger's means.
    DELETE FROM af_decoded WHERE id = {id};
    INSERT INTO af_decoded (id, bad, local, long, entropy, rule_zone, rule_confidence)
    SELECT {id}, bad, local, long, entropy, rule_zone, rule_confidence FROM ({decoded});
    INSERT INTO af_fingerprints (id, {columns}, created_us)
    SELECT d.id, {exprs}, {created}
    FROM af_decoded d WHERE d.id = {id};
    DELETE FROM af_decoded WHERE id = {id};
END;
",
        checks = raise_statements(SEED_ROW, "NEW"),
        decoded = sql_decoded("NEW.fingerprint", "coalesce(NEW.schema_version, 1)"),
        columns = columns.join(", "),
        exprs = exprs.join(", "),
        created = created_us("NEW.created_at"),
    )
}

fn update_through_view() -> String {
    // The vector is decoded only where it matters: it changed, or the zone became NULL.
    let d = sql_decoded("NEW.fingerprint", "coalesce(NEW.schema_version, 1)");
    let bad = format!(
        "(CASE WHEN NEW.fingerprint IS OLD.fingerprint \
              AND coalesce(NEW.schema_version, 1) IS coalesce(OLD.schema_version, 1) \
         THEN invalid ELSE (SELECT bad FROM ({d})) END)"
    );
    let values = stored_values(
        "NEW",
        &bad,
        &format!("(SELECT rule_zone FROM ({d}))"),
        &format!("(SELECT rule_confidence FROM ({d}))"),
    );
    let assignments: Vec<String> = values
        .into_iter()
        .map(|(c, e)| format!("{c} = {e}"))
        .collect();
    format!(
        "CREATE TRIGGER IF NOT EXISTS af_fingerprints_update_through_view
INSTEAD OF UPDATE ON fingerprints
BEGIN
    SELECT RAISE(ABORT, 'fingerprints.id, request_id and step cannot be changed: delete the row and insert it again')
    WHERE NEW.id IS NOT OLD.id OR NEW.request_id IS NOT OLD.request_id OR NEW.step IS NOT OLD.step;
{checks}
    -- Unqualified columns are the stored row's (statements in triggers take no table alias).
    UPDATE af_fingerprints SET {assignments},
        created_us = CASE WHEN NEW.created_at IS OLD.created_at THEN created_us
                          ELSE {created} END
    WHERE id = OLD.id;
END;
",
        checks = raise_statements(SEED_ROW, "NEW"),
        assignments = assignments.join(",\n        "),
        created = created_us("NEW.created_at"),
    )
}

const DELETE_THROUGH_VIEW: &str = "CREATE TRIGGER IF NOT EXISTS af_fingerprints_delete_through_view
INSTEAD OF DELETE ON fingerprints
BEGIN
    DELETE FROM af_fingerprints WHERE id = OLD.id;
END;
";

/// Bookkeeping of any update of an `af_fingerprints` row: each part runs only when its
/// columns changed (an update through the view sets every column).
fn after_update() -> String {
    let k = "(NEW.id >> 24)";
    let nb = neighbours(k, "NEW.id");
    let oe = first_expert("OLD.top_expert_ids");
    let ne = first_expert("NEW.top_expert_ids");
    let counted = "OLD.think_phase IS NOT NEW.think_phase OR OLD.zone IS NOT NEW.zone \
        OR OLD.router_entropy IS NOT NEW.router_entropy";
    let vector = "OLD.fingerprint IS NOT NEW.fingerprint OR OLD.layout IS NOT NEW.layout \
        OR OLD.invalid IS NOT NEW.invalid";
    let hourly_cols = "OLD.zone IS NOT NEW.zone OR OLD.manifold_confidence IS NOT NEW.manifold_confidence \
        OR OLD.cluster_id IS NOT NEW.cluster_id OR OLD.created_us IS NOT NEW.created_us";
    let experts = "OLD.top_expert_ids IS NOT NEW.top_expert_ids";
    let clusters = "OLD.cluster_id IS NOT NEW.cluster_id";
    format!(
        "CREATE TRIGGER IF NOT EXISTS af_fingerprints_update
AFTER UPDATE ON af_fingerprints
BEGIN
    -- Hourly and daily counts.
    UPDATE af_zone_hourly SET count = count - 1,
        confidence_sum = confidence_sum - coalesce(OLD.manifold_confidence, 0),
        confidence_count = confidence_count - (OLD.manifold_confidence IS NOT NULL)
    WHERE hour = OLD.created_us / 3600000000 AND zone = OLD.zone AND ({hourly_cols});
    INSERT INTO af_zone_hourly (hour, zone, count, confidence_sum, confidence_count)
    SELECT NEW.created_us / 3600000000, NEW.zone, 1, coalesce(NEW.manifold_confidence, 0),
           NEW.manifold_confidence IS NOT NULL
    WHERE NEW.zone IS NOT NULL AND ({hourly_cols})
    ON CONFLICT (hour, zone) DO UPDATE SET
        count = count + 1,
        confidence_sum = confidence_sum + excluded.confidence_sum,
        confidence_count = confidence_count + excluded.confidence_count;
    UPDATE af_cluster_daily SET count = count - 1
    WHERE day = OLD.created_us / 86400000000 AND cluster_id = OLD.cluster_id AND ({hourly_cols});
    INSERT INTO af_cluster_daily (day, cluster_id, count)
    SELECT NEW.created_us / 86400000000, NEW.cluster_id, 1
    WHERE NEW.cluster_id >= 0 AND ({hourly_cols})
    ON CONFLICT (day, cluster_id) DO UPDATE SET count = count + 1;
    INSERT INTO af_hour_ids (hour, min_id, max_id)
    SELECT NEW.created_us / 3600000000, NEW.id, NEW.id WHERE OLD.created_us IS NOT NEW.created_us
    ON CONFLICT (hour) DO UPDATE SET
        min_id = min(min_id, excluded.min_id), max_id = max(max_id, excluded.max_id);
{marks}
    -- Store-wide counters.
    UPDATE af_meta SET value = value + NEW.invalid - OLD.invalid
    WHERE key = 'invalid_rows' AND OLD.invalid IS NOT NEW.invalid;
    UPDATE af_meta SET value = value - 1
    WHERE key = 'rows_layout:' || OLD.layout AND OLD.layout IS NOT NEW.layout;
    INSERT INTO af_meta (key, value) SELECT 'rows_layout:' || NEW.layout, 1
    WHERE OLD.layout IS NOT NEW.layout
    ON CONFLICT (key) DO UPDATE SET value = value + 1;
    -- The request's counts, means and tallies: the old row out, the new one in.
    UPDATE af_request_stats SET
        think = think - (OLD.think_phase IS 0) + (NEW.think_phase IS 0),
        output = output - (OLD.think_phase IS 1) + (NEW.think_phase IS 1),
        zone0 = zone0 - (OLD.zone IS 0) + (NEW.zone IS 0),
        zone1 = zone1 - (OLD.zone IS 1) + (NEW.zone IS 1),
        zone2 = zone2 - (OLD.zone IS 2) + (NEW.zone IS 2),
        zone3 = zone3 - (OLD.zone IS 3 OR OLD.zone IS NULL) + (NEW.zone IS 3 OR NEW.zone IS NULL),
        router_count = router_count - (OLD.router_entropy IS NOT NULL)
            + (NEW.router_entropy IS NOT NULL),
        router_sum = router_sum - coalesce(OLD.router_entropy, 0)
            + coalesce(NEW.router_entropy, 0)
    WHERE request_key = {k} AND ({counted});
    UPDATE af_request_stats SET (measured, local_sum, long_sum, entropy_sum) = (
        SELECT measured - 1, local_sum - d.local, long_sum - d.long, entropy_sum - d.entropy
        FROM {old} d)
    WHERE request_key = {k} AND NOT OLD.invalid AND ({vector});
    UPDATE af_request_stats SET (measured, local_sum, long_sum, entropy_sum) = (
        SELECT measured + 1, local_sum + d.local, long_sum + d.long, entropy_sum + d.entropy
        FROM {new} d)
    WHERE request_key = {k} AND NOT NEW.invalid AND ({vector});
    UPDATE af_request_clusters SET count = count - 1
    WHERE request_key = {k} AND cluster_id = OLD.cluster_id AND ({clusters});
    INSERT INTO af_request_clusters (request_key, cluster_id, count)
    SELECT {k}, NEW.cluster_id, 1 WHERE NEW.cluster_id >= 0 AND ({clusters})
    ON CONFLICT (request_key, cluster_id) DO UPDATE SET count = count + 1;
    UPDATE af_request_experts SET count = count - (SELECT count(*) FROM af_numbers n
        WHERE n.i < length(OLD.top_expert_ids) / 4 AND {old_expert} = expert_id)
    WHERE request_key = {k} AND OLD.top_expert_ids IS NOT NULL AND ({experts});
    INSERT INTO af_request_experts (request_key, expert_id, count)
    SELECT {k}, {new_expert}, 1 FROM af_numbers n
    WHERE n.i < length(NEW.top_expert_ids) / 4 AND ({experts})
    ON CONFLICT (request_key, expert_id) DO UPDATE SET count = count + 1;
    DELETE FROM af_request_clusters WHERE request_key = {k} AND count <= 0;
    DELETE FROM af_request_experts WHERE request_key = {k} AND count <= 0;
    UPDATE af_request_stats SET
        cluster_transitions = cluster_transitions
            + (SELECT {t1} + {t2} - {t3} - {t4} FROM {nb})
    WHERE request_key = {k} AND ({clusters});
    UPDATE af_request_stats SET
        expert_switches = expert_switches + (SELECT {s1} + {s2} - {s3} - {s4} FROM {nb})
    WHERE request_key = {k} AND ({experts});
    {preview}
    {refresh}
END;
",
        marks = sparse_marks("NEW"),
        old = decoded("OLD"),
        new = decoded("NEW"),
        old_expert = sql_i32_at("OLD.top_expert_ids", "n.i"),
        new_expert = sql_i32_at("NEW.top_expert_ids", "n.i"),
        t1 = transition("pc", "NEW.cluster_id"),
        t2 = transition("NEW.cluster_id", "nc"),
        t3 = transition("pc", "OLD.cluster_id"),
        t4 = transition("OLD.cluster_id", "nc"),
        s1 = switch("pe", &ne),
        s2 = switch(&ne, "ne"),
        s3 = switch("pe", &oe),
        s4 = switch(&oe, "ne"),
        preview = preview_sql(
            k,
            "AND NEW.id <= preview_end AND OLD.token_text IS NOT NEW.token_text"
        ),
        refresh = refresh_sql(k),
    )
}

/// Bookkeeping of a deleted `af_fingerprints` row.
fn after_delete() -> String {
    let k = "(OLD.id >> 24)";
    let nb = neighbours(k, "OLD.id");
    let oe = first_expert("OLD.top_expert_ids");
    format!(
        "CREATE TRIGGER IF NOT EXISTS af_fingerprints_delete
AFTER DELETE ON af_fingerprints
BEGIN
{meta}{hourly}{counts}{vector}{tallies}
    UPDATE af_request_stats SET
        cluster_transitions = cluster_transitions + (SELECT {t1} - {t2} - {t3} FROM {nb}),
        expert_switches = expert_switches + (SELECT {s1} - {s2} - {s3} FROM {nb})
    WHERE request_key = {k};
    {preview}
    DELETE FROM request_summary
    WHERE request_id = (SELECT request_id FROM af_requests WHERE request_key = {k})
      AND (SELECT row_count FROM af_request_stats WHERE request_key = {k}) <= 0;
    DELETE FROM af_request_stats WHERE request_key = {k} AND row_count <= 0;
    {refresh}
END;
",
        meta = meta("OLD", "-"),
        hourly = hourly("OLD", "-"),
        counts = stats_counts("OLD", "-"),
        vector = stats_vector("OLD", "-", &decoded("OLD")),
        tallies = tallies("OLD", "-"),
        t1 = transition("pc", "nc"),
        t2 = transition("pc", "OLD.cluster_id"),
        t3 = transition("OLD.cluster_id", "nc"),
        s1 = switch("pe", "ne"),
        s2 = switch("pe", &oe),
        s3 = switch(&oe, "ne"),
        preview = preview_sql(k, "AND OLD.id <= preview_end"),
        refresh = refresh_sql(k),
    )
}

/// The `AFTER UPDATE` trigger of `af_fingerprints` alone (the discovery job's bulk write
/// drops it for one statement and makes it again, `runs.rs`).
pub fn update_trigger() -> String {
    after_update()
}

/// Every trigger, one `CREATE TRIGGER IF NOT EXISTS` statement each.
pub fn statements() -> Vec<String> {
    vec![
        insert_through_view(),
        after_insert(),
        update_through_view(),
        DELETE_THROUGH_VIEW.to_owned(),
        after_update(),
        after_delete(),
    ]
}

/// A statement as `sqlite_schema.sql` keeps it: SQLite drops `IF NOT EXISTS` and the end.
pub fn as_stored(statement: &str) -> String {
    statement
        .replacen("CREATE TRIGGER IF NOT EXISTS ", "CREATE TRIGGER ", 1)
        .trim_end()
        .trim_end_matches(';')
        .to_owned()
}
