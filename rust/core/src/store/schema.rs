//! Creating the schema, upgrading earlier attnfast databases, and taking over databases made
//! with the seed's own `schema.sql`. All of it runs in one transaction: all or nothing.

use rusqlite::config::DbConfig;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::checks::{SEED_ROW, STORED_ROW, first_problem};
use super::time::now_us;
use super::{summary, triggers, vectors};
use crate::error::{CoreError, Result};
use crate::layout::Layout;
use crate::zone::zone_of;

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

/// The tables and views; every statement is idempotent.
pub const SCHEMA_SQL: &str = include_str!("schema.sql");

/// The physical schema this version writes. A database from a newer attnfast is refused
/// rather than written with rules this version does not know. 2 added the `invalid` flag,
/// the per-request stats behind `request_summary`, and update and delete through the view.
pub const STORE_SCHEMA: i64 = 2;

/// What opening found, besides the row counts in `af_meta`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Opened {
    /// Rows taken over from a seed database.
    pub migrated_rows: u64,
    /// Rows an earlier attnfast let in that no reader can read, moved to `af_quarantine`.
    pub quarantined_rows: u64,
    /// An upgrade from an earlier physical schema ran.
    pub upgraded_from: Option<i64>,
}

/// Turns a seed database (`fingerprints` is a table with the per-row trigger) into the
/// attnfast layout. Rows get attnfast ids (prototypes follow); `request_summary` and the
/// other seed tables are kept.
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

DROP TABLE af_seed_fingerprints;
";

/// The hourly and daily counts, hourly id ranges and store-wide counters, from the rows.
const RECOUNT_SQL: &str = "
DELETE FROM af_hour_ids;
DELETE FROM af_zone_hourly;
DELETE FROM af_cluster_daily;
DELETE FROM af_meta WHERE key LIKE 'rows_layout:%' OR key LIKE 'has:%';
INSERT INTO af_hour_ids (hour, min_id, max_id)
SELECT created_us / 3600000000, min(id), max(id) FROM af_fingerprints GROUP BY 1;
INSERT INTO af_zone_hourly (hour, zone, count, confidence_sum, confidence_count)
SELECT created_us / 3600000000, zone, count(*), total(manifold_confidence),
       count(manifold_confidence)
FROM af_fingerprints WHERE zone IS NOT NULL GROUP BY 1, 2;
INSERT INTO af_cluster_daily (day, cluster_id, count)
SELECT created_us / 86400000000, cluster_id, count(*)
FROM af_fingerprints WHERE cluster_id >= 0 GROUP BY 1, 2;
INSERT INTO af_meta (key, value) SELECT 'rows_layout:' || layout, count(*)
FROM af_fingerprints GROUP BY layout;
INSERT OR REPLACE INTO af_meta (key, value) VALUES
    ('rows', (SELECT count(*) FROM af_fingerprints)),
    ('invalid_rows', (SELECT count(*) FROM af_fingerprints WHERE invalid));
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

/// What kind of database a file holds.
enum Kind {
    /// No tables at all: a new or empty file.
    Empty,
    Attnfast(i64),
    Seed,
    /// Someone else's database: its table names.
    Other(Vec<String>),
}

fn kind(conn: &Connection) -> Result<Kind> {
    if object_type(conn, "af_meta")?.is_some() {
        let version: Option<i64> = conn
            .query_row(
                "SELECT value FROM af_meta WHERE key = 'store_schema'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        return Ok(Kind::Attnfast(version.unwrap_or(1)));
    }
    if object_type(conn, "fingerprints")?.as_deref() == Some("table") {
        return Ok(Kind::Seed);
    }
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )?;
    let tables = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(if tables.is_empty() {
        Kind::Empty
    } else {
        Kind::Other(tables)
    })
}

/// Refuses, before anything is written (opening for writing would switch the file to WAL
/// mode), an SQLite database of another program, unless `init`. A missing, empty or
/// unreadable file passes: creating or opening it reports what is wrong.
pub fn refuse_foreign(path: &std::path::Path, init: bool) -> Result<()> {
    if init || std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return Ok(());
    }
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = Connection::open_with_flags(path, flags) else {
        return Ok(());
    };
    match kind(&conn) {
        Ok(Kind::Other(tables)) => Err(foreign(&path.display().to_string(), &tables)),
        _ => Ok(()),
    }
}

fn foreign(path: &str, tables: &[String]) -> CoreError {
    let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
    let more = if tables.len() > 5 { ", ..." } else { "" };
    CoreError::Store(format!(
        "{path} is an SQLite database but not a fingerprint database (it has the tables \
         {}{more}); attnfast leaves it as it is. Use another file, or add attnfast's tables \
         to it on purpose with `attnfast init --db {path}`",
        shown.join(", ")
    ))
}

/// Creates, upgrades or converts the schema. `init` allows adding attnfast's tables to a
/// database that holds other tables.
pub fn ensure_schema(conn: &mut Connection, path: &str, init: bool) -> Result<Opened> {
    // Every count is kept explicitly below; the seed's session trigger and attnfast's own
    // must not fire on the rows this moves.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    let result = ensure_schema_inner(conn, path, init);
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true)?;
    result
}

fn ensure_schema_inner(conn: &mut Connection, path: &str, init: bool) -> Result<Opened> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut opened = Opened::default();
    let found = kind(&tx)?;
    match &found {
        Kind::Other(tables) if !init => return Err(foreign(path, tables)),
        Kind::Attnfast(v) if *v > STORE_SCHEMA => {
            return Err(CoreError::Store(format!(
                "{path} has attnfast store schema {v}; this attnfast ({}) writes schema \
                 {STORE_SCHEMA}: upgrade attnfast to open it",
                crate::VERSION
            )));
        }
        Kind::Seed => {
            check_seed_rows(&tx, path)?;
            opened.migrated_rows = tx.query_row("SELECT count(*) FROM fingerprints", [], |r| {
                r.get::<_, i64>(0)
            })? as u64;
            tx.execute_batch(MIGRATE_SEED_SQL)?;
        }
        Kind::Attnfast(v) if *v < STORE_SCHEMA => {
            opened.upgraded_from = Some(*v);
            tx.execute_batch(&triggers::drop_all())?;
            tx.execute_batch(
                "ALTER TABLE af_fingerprints ADD COLUMN invalid INTEGER NOT NULL DEFAULT 0;",
            )?;
        }
        _ => {}
    }
    tx.execute_batch(SCHEMA_SQL)?;
    tx.execute_batch(&vectors::byte_table_sql())?;
    match found {
        Kind::Seed => {
            tx.execute_batch(COPY_SEED_ROWS_SQL)?;
            tx.execute(
                "INSERT OR REPLACE INTO af_meta (key, value) VALUES ('migrated_seed_rows', ?1)",
                [opened.migrated_rows as i64],
            )?;
            rebuild(&tx)?;
        }
        Kind::Attnfast(v) if v < STORE_SCHEMA => {
            opened.quarantined_rows = quarantine(&tx)?;
            rebuild(&tx)?;
        }
        _ => {}
    }
    // Written only when it changes: opening a database to read it leaves its bytes as they were.
    tx.execute(
        "INSERT INTO af_meta (key, value) VALUES ('store_schema', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value IS NOT excluded.value",
        [STORE_SCHEMA],
    )?;
    replace_changed_triggers(&tx)?;
    tx.commit()?;
    Ok(opened)
}

/// Creates the triggers, replacing the stored ones when their SQL is not this build's: a
/// database written by an earlier build of the same physical schema (or whose triggers were
/// changed by hand) gets this build's rules without an upgrade step. When they are the same,
/// the schema is left untouched, so other connections keep their prepared statements.
fn replace_changed_triggers(tx: &Transaction<'_>) -> Result<()> {
    let wanted = triggers::statements();
    let mut stored: Vec<String> = tx
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter(|(name, _)| triggers::NAMES.contains(&name.as_str()))
        .map(|(_, sql)| sql)
        .collect();
    stored.sort();
    let mut expected: Vec<String> = wanted.iter().map(|s| triggers::as_stored(s)).collect();
    expected.sort();
    if stored != expected {
        tx.execute_batch(&triggers::drop_all())?;
        tx.execute_batch(&wanted.concat())?;
    }
    Ok(())
}

/// Refuses, naming the row and the column, a seed database holding a row that no reader
/// could read; nothing is changed.
fn check_seed_rows(tx: &Transaction<'_>, path: &str) -> Result<()> {
    let bad: Option<(i64, String)> = tx
        .query_row(
            &format!(
                "SELECT id, problem FROM (SELECT id, {} AS problem FROM fingerprints s) \
                 WHERE problem IS NOT NULL ORDER BY id LIMIT 1",
                first_problem(SEED_ROW, "s")
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match bad {
        Some((id, problem)) => Err(CoreError::Store(format!(
            "cannot convert the seed database {path}: its row id {id} breaks a rule ({problem}); \
             nothing was changed"
        ))),
        None => Ok(()),
    }
}

/// Moves the rows no reader can read to `af_quarantine`; returns how many.
fn quarantine(tx: &Transaction<'_>) -> Result<u64> {
    let problem = first_problem(STORED_ROW, "f");
    let moved = tx.execute(
        &format!(
            "INSERT INTO af_quarantine (reason, quarantined_us, request_id, id, session_id,
                 token_id, token_text, think_phase, segment_idx, fingerprint, zone,
                 manifold_confidence, cluster_id, cluster_probability, top_expert_ids,
                 router_entropy, expert_load_balance, top_k_positions, top_k_scores,
                 sink_token_mass, capture_layer_ids, layout, model_id, created_us)
             SELECT reason, ?1, (SELECT request_id FROM af_requests WHERE request_key = id >> 24),
                 id, session_id, token_id, token_text, think_phase, segment_idx, fingerprint,
                 zone, manifold_confidence, cluster_id, cluster_probability, top_expert_ids,
                 router_entropy, expert_load_balance, top_k_positions, top_k_scores,
                 sink_token_mass, capture_layer_ids, layout, model_id, created_us
             FROM (SELECT f.*, {problem} AS reason FROM af_fingerprints f)
             WHERE reason IS NOT NULL"
        ),
        [now_us()],
    )?;
    if moved > 0 {
        tx.execute(
            &format!(
                "DELETE FROM af_fingerprints WHERE {} IS NOT NULL",
                first_problem(STORED_ROW, "af_fingerprints")
            ),
            [],
        )?;
    }
    Ok(moved as u64)
}

/// Flags the rows whose vectors break their layout's rules, then recounts everything that is
/// derived from the rows.
fn rebuild(tx: &Transaction<'_>) -> Result<()> {
    let mut bad = Vec::new();
    // v1 rows without a zone get the rule zone, as on every write path (the seed left rows
    // its classifier had not seen NULL).
    let mut unzoned = Vec::new();
    {
        let mut stmt = tx.prepare("SELECT id, layout, fingerprint, zone FROM af_fingerprints")?;
        let mut rows = stmt.query([])?;
        let mut fp = Vec::with_capacity(20);
        while let Some(r) = rows.next()? {
            let blob = r
                .get_ref(2)?
                .as_blob()
                .map_err(|e| CoreError::Store(format!("SQLite: {e}")))?;
            fp.clear();
            fp.extend(
                blob.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            let layout = Layout::from_code(r.get(1)?)?;
            if vectors::problem(layout, &fp).is_some() {
                bad.push(r.get::<_, i64>(0)?);
            } else if layout == Layout::V1 && r.get_ref(3)?.data_type() == Type::Null {
                let (zone, confidence) = zone_of(fp[..].try_into().expect("20 floats"));
                unzoned.push((r.get::<_, i64>(0)?, zone as u8, f64::from(confidence)));
            }
        }
    }
    let mut flag = tx.prepare(
        "UPDATE af_fingerprints SET invalid = 1, zone = 3, manifold_confidence = NULL WHERE id = ?1",
    )?;
    for id in bad {
        flag.execute([id])?;
    }
    let mut zone = tx.prepare(
        "UPDATE af_fingerprints SET zone = ?2,
             manifold_confidence = coalesce(manifold_confidence, ?3) WHERE id = ?1",
    )?;
    for (id, code, confidence) in unzoned {
        zone.execute(rusqlite::params![id, code, confidence])?;
    }
    tx.execute_batch(RECOUNT_SQL)?;
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
    summary::rebuild(tx)
}
