//! Creating the schema, and taking over databases made with the seed's own `schema.sql`.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::error::{CoreError, Result};

/// Optional columns that are often NULL everywhere. `af_meta` gets a `has:<column>` row once
/// one of them holds a value (by the writer, the view's trigger or an update trigger);
/// exports read only those that have one.
pub const SPARSE_COLUMNS: [&str; 13] = [
    "session_id",
    "token_id",
    "token_text",
    "think_phase",
    "cluster_probability",
    "router_entropy",
    "expert_load_balance",
    "sink_token_mass",
    "top_k_positions",
    "top_k_scores",
    "capture_layer_ids",
    "top_expert_ids",
    "model_id",
];

/// The whole schema; every statement is idempotent.
pub const SCHEMA_SQL: &str = include_str!("schema.sql");

/// The physical schema this version writes. A database from a newer attnfast is refused
/// rather than written with rules this version does not know.
pub const STORE_SCHEMA: i64 = 1;

/// Turns a seed database (`fingerprints` is a table with the per-row trigger) into the
/// attnfast layout, in the same transaction as the schema script: all or nothing. Rows get
/// attnfast ids (prototypes follow); `request_summary` and the other seed tables are kept.
const MIGRATE_SEED_SQL: &str = "
DROP TRIGGER IF EXISTS update_request_summary_on_insert;
DROP VIEW IF EXISTS recent_fingerprints;
DROP VIEW IF EXISTS zone_distribution_hourly;
DROP VIEW IF EXISTS cluster_growth;
DROP INDEX IF EXISTS idx_fingerprints_request;
DROP INDEX IF EXISTS idx_fingerprints_session;
DROP INDEX IF EXISTS idx_fingerprints_cluster;
DROP INDEX IF EXISTS idx_fingerprints_zone;
DROP INDEX IF EXISTS idx_fingerprints_created;
DROP INDEX IF EXISTS idx_fingerprints_phase;
ALTER TABLE fingerprints RENAME TO af_seed_fingerprints;
";

const COPY_SEED_ROWS_SQL: &str = "
INSERT INTO af_requests (request_id)
SELECT request_id FROM af_seed_fingerprints GROUP BY request_id ORDER BY min(id);

INSERT INTO af_fingerprints (
    id, session_id, token_id, token_text, think_phase, segment_idx,
    fingerprint, zone, manifold_confidence, cluster_id, cluster_probability, top_expert_ids,
    router_entropy, expert_load_balance, top_k_positions, top_k_scores, sink_token_mass,
    capture_layer_ids, layout, model_id, created_us)
SELECT r.request_key * 16777216 + s.step, s.session_id, s.token_id, s.token_text,
    CASE s.think_phase WHEN 'think' THEN 0 WHEN 'output' THEN 1 WHEN 'unknown' THEN 2 END,
    s.segment_idx, s.fingerprint,
    CASE s.manifold_zone WHEN 'syntax_floor' THEN 0 WHEN 'semantic_bridge' THEN 1
        WHEN 'structure_ripple' THEN 2 WHEN 'unknown' THEN 3 END,
    s.manifold_confidence, s.cluster_id, s.cluster_probability, s.top_expert_ids,
    s.router_entropy, s.expert_load_balance, s.top_k_positions, s.top_k_scores,
    s.sink_token_mass, s.capture_layer_ids, coalesce(s.schema_version, 1), s.model_id,
    CAST(round((julianday(coalesce(s.created_at, 'now')) - 2440587.5) * 86400000) AS INTEGER)
        * 1000
FROM af_seed_fingerprints s JOIN af_requests r ON r.request_id = s.request_id
ORDER BY s.id;

-- Ids change (to request_key * 2^24 + step); prototypes follow their rows.
UPDATE prototypes SET fingerprint_id = (
    SELECT r.request_key * 16777216 + s.step
    FROM af_seed_fingerprints s JOIN af_requests r ON r.request_id = s.request_id
    WHERE s.id = prototypes.fingerprint_id)
WHERE fingerprint_id IN (SELECT id FROM af_seed_fingerprints);

INSERT INTO af_hour_ids (hour, min_id, max_id)
SELECT created_us / 3600000000, min(id), max(id) FROM af_fingerprints GROUP BY 1;

INSERT INTO af_zone_hourly (hour, zone, count, confidence_sum, confidence_count)
SELECT created_us / 3600000000, zone, count(*), total(manifold_confidence),
       count(manifold_confidence)
FROM af_fingerprints WHERE zone IS NOT NULL GROUP BY 1, 2;

INSERT INTO af_cluster_daily (day, cluster_id, count)
SELECT created_us / 86400000000, cluster_id, count(*)
FROM af_fingerprints WHERE cluster_id IS NOT NULL GROUP BY 1, 2;

DROP TABLE af_seed_fingerprints;
";

fn object_type(conn: &Connection, name: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT type FROM sqlite_master WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?)
}

/// Creates or checks the schema. Returns the number of rows taken over from a seed database
/// (0 when there was none).
pub fn ensure_schema(conn: &mut Connection) -> Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let seed = object_type(&tx, "fingerprints")?.as_deref() == Some("table");
    let mut migrated = 0;
    if seed {
        migrated = tx.query_row("SELECT count(*) FROM fingerprints", [], |r| {
            r.get::<_, i64>(0)
        })? as u64;
        let out_of_range: i64 = tx.query_row(
            "SELECT count(*) FROM fingerprints WHERE step < 0 OR step > 16777215",
            [],
            |r| r.get(0),
        )?;
        if out_of_range > 0 {
            return Err(CoreError::Store(format!(
                "cannot convert this seed database: {out_of_range} row(s) have a step outside \
                 0..16777215; nothing was changed"
            )));
        }
        tx.execute_batch(MIGRATE_SEED_SQL)?;
    }
    tx.execute_batch(SCHEMA_SQL)?;
    if seed {
        tx.execute_batch(COPY_SEED_ROWS_SQL)?;
        tx.execute(
            "INSERT OR REPLACE INTO af_meta (key, value) VALUES ('migrated_seed_rows', ?1), \
             ('rows', ?1)",
            [migrated as i64],
        )?;
        for column in SPARSE_COLUMNS {
            // Column names come from the constant above, never from input.
            tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:{column}', 1 \
                     WHERE EXISTS (SELECT 1 FROM af_fingerprints WHERE {column} IS NOT NULL)"
                ),
                [],
            )?;
        }
    }
    let version: i64 = tx.query_row(
        "SELECT value FROM af_meta WHERE key = 'store_schema'",
        [],
        |r| r.get(0),
    )?;
    if version > STORE_SCHEMA {
        return Err(CoreError::Store(format!(
            "this database has attnfast store schema {version}; this attnfast ({}) writes \
             schema {STORE_SCHEMA}: upgrade attnfast to open it",
            crate::VERSION
        )));
    }
    tx.commit()?;
    Ok(migrated)
}
