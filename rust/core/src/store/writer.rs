//! The background writer: one thread per store, one SQLite connection, rows arriving through a
//! channel. It drains whatever is queued into one transaction, so a fast producer gets large
//! transactions (throughput) and a slow one gets prompt commits (latency). A flush request
//! is answered only after everything queued before it is committed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, Statement, Transaction, TransactionBehavior};

use super::batch::{Batch, ListColumn, NULL_CODE, TextColumn, row_id};
use super::connection;
use super::options::{DuplicatePolicy, StoreOptions};
use super::queue::RowBudget;
use super::schema::SPARSE_COLUMNS;
use super::summary::{Deltas, LastRow, SummaryRow, last_row};
use crate::error::{CoreError, Result};
use crate::fingerprint::FINGERPRINT_DIM;

/// Rows per transaction at most; beyond it the writer commits and goes on.
const MAX_TRANSACTION_ROWS: usize = 1 << 19;
/// Request keys cached per writer; keys never change, so the cache only needs a size bound.
const MAX_CACHED_KEYS: usize = 1 << 20;
/// Duplicate rows named in a `DuplicateStepError` message.
const DUPLICATES_NAMED: usize = 5;

/// What became of one batch once its transaction committed: rows stored, and rows refused
/// because their `(request_id, step)` was stored already (the first few named).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub stored: u64,
    pub duplicates: u64,
    pub first_duplicates: Vec<(String, i64)>,
}

pub enum Message {
    /// A batch, and where to send what became of it (a tracked append).
    Rows(Box<Batch>, Option<Sender<Result<Written>>>),
    Flush(Sender<Result<()>>),
}

/// Counters shared with the store handle, for `stats()`.
#[derive(Debug, Default)]
pub struct WriterCounters {
    pub rows_written: AtomicU64,
    pub duplicates_rejected: AtomicU64,
    pub transactions: AtomicU64,
    pub failed_rows: AtomicU64,
}

pub struct WriterThread {
    pub sender: Sender<Message>,
    pub handle: JoinHandle<()>,
}

/// Starts the writer on its own connection to `path`.
pub fn spawn(
    path: &Path,
    opts: &StoreOptions,
    budget: Arc<RowBudget>,
    counters: Arc<WriterCounters>,
) -> Result<WriterThread> {
    let conn = connection::open(path, opts)?;
    // The writer keeps every count itself, per transaction; the triggers that do the same for
    // rows written with SQL would cost a trigger program per row here.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    // Why: checkpoints (copying WAL pages into the database) would otherwise run inside the
    // writer's commits, about a third of its time. A second thread does them concurrently,
    // in PASSIVE mode, which never blocks the writer or readers.
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
    let (checkpoint_due, checkpoints) = crossbeam_channel::bounded::<()>(1);
    let checkpointer = connection::open(path, opts)?;
    let checkpoint_thread = std::thread::Builder::new()
        .name("attnfast-store-checkpoint".into())
        .spawn(move || {
            // Ends when the writer drops its sender.
            while checkpoints.recv().is_ok() {
                let _ = checkpointer.execute_batch("PRAGMA wal_checkpoint(PASSIVE);");
            }
        })?;
    let (sender, receiver) = crossbeam_channel::unbounded();
    let mut writer = Writer {
        conn,
        keys: HashMap::new(),
        policy: opts.on_duplicate,
        budget,
        counters,
        checkpoint: Some((checkpoint_due, checkpoint_thread)),
        error: None,
        duplicates: Vec::new(),
        duplicate_count: 0,
    };
    let handle = std::thread::Builder::new()
        .name("attnfast-store-writer".into())
        .spawn(move || writer.run(receiver))?;
    Ok(WriterThread { sender, handle })
}

struct Writer {
    conn: Connection,
    keys: HashMap<String, i64>,
    policy: DuplicatePolicy,
    budget: Arc<RowBudget>,
    counters: Arc<WriterCounters>,
    /// Wakes the checkpoint thread after each commit (a full channel means it is awake);
    /// taken when the writer stops, to end and join that thread.
    checkpoint: Option<(Sender<()>, JoinHandle<()>)>,
    /// The first failure since the last flush, reported to that flush.
    error: Option<CoreError>,
    duplicates: Vec<(String, i64)>,
    duplicate_count: u64,
}

impl Writer {
    fn run(&mut self, receiver: Receiver<Message>) {
        while let Ok(first) = receiver.recv() {
            let mut batches = Vec::new();
            let mut replies = Vec::new();
            let mut acks = Vec::new();
            let mut rows = 0;
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    Message::Rows(batch, reply) => {
                        rows += batch.rows();
                        batches.push(*batch);
                        replies.push(reply);
                    }
                    Message::Flush(ack) => acks.push(ack),
                }
                if rows < MAX_TRANSACTION_ROWS {
                    next = receiver.try_recv().ok();
                }
            }
            if !batches.is_empty() {
                let outcomes = self.write(&batches);
                self.budget.release(rows);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
                if let Some((due, _)) = &self.checkpoint {
                    let _ = due.try_send(());
                }
            }
            for ack in acks {
                let _ = ack.send(self.take_outcome());
            }
        }
        // Every connection to the file is closed when the store's close() returns, so other
        // SQLite code in the process may then use the file safely.
        if let Some((due, thread)) = self.checkpoint.take() {
            drop(due);
            let _ = thread.join();
        }
    }

    /// The result a flush reports: the first write error, else the duplicates under the
    /// `error` policy, else success. Reporting clears it.
    fn take_outcome(&mut self) -> Result<()> {
        if let Some(e) = self.error.take() {
            self.duplicates.clear();
            self.duplicate_count = 0;
            return Err(e);
        }
        if self.policy == DuplicatePolicy::Error && self.duplicate_count > 0 {
            let named: Vec<String> = self
                .duplicates
                .drain(..)
                .map(|(r, s)| format!("({r:?}, {s})"))
                .collect();
            let count = std::mem::take(&mut self.duplicate_count);
            return Err(CoreError::Duplicate(format!(
                "{count} row(s) repeat a stored (request_id, step) and were not written \
                 (the stored rows are kept); first: {}",
                named.join(", ")
            )));
        }
        Ok(())
    }

    /// Writes the batches in one transaction. If that fails, each batch is retried alone so
    /// that one bad batch cannot take the others down with it. Returns what became of each.
    fn write(&mut self, batches: &[Batch]) -> Vec<Result<Written>> {
        if batches.len() > 1
            && let Ok(written) = self.write_transaction(batches)
        {
            return written.into_iter().map(Ok).collect();
        }
        batches
            .iter()
            .map(|batch| {
                self.write_transaction(std::slice::from_ref(batch))
                    .map(|mut w| w.remove(0))
                    .map_err(|e| {
                        self.counters
                            .failed_rows
                            .fetch_add(batch.rows() as u64, Ordering::Relaxed);
                        let e = CoreError::Store(format!(
                            "{} row(s) were not stored: {e}",
                            batch.rows()
                        ));
                        self.error.get_or_insert(e.clone());
                        e
                    })
            })
            .collect()
    }

    fn write_transaction(&mut self, batches: &[Batch]) -> Result<Vec<Written>> {
        let result = self.try_write_transaction(batches);
        if result.is_err() {
            // Keys created by the rolled-back transaction no longer exist.
            self.keys.clear();
        }
        result
    }

    fn try_write_transaction(&mut self, batches: &[Batch]) -> Result<Vec<Written>> {
        if self.keys.len() > MAX_CACHED_KEYS {
            self.keys.clear();
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deltas = Deltas::default();
        let mut duplicates = Vec::new();
        let mut written_columns = Vec::new();
        let keys = batches
            .iter()
            .map(|batch| request_keys(&tx, &mut self.keys, &batch.request_ids))
            .collect::<Result<Vec<_>>>()?;
        // Each touched request's last row before this transaction: the summaries extend from
        // it (see summary.rs).
        let mut last: HashMap<i64, Option<LastRow>> = HashMap::new();
        for key in keys.iter().flatten() {
            if !last.contains_key(key) {
                last.insert(*key, last_row(&tx, *key)?);
            }
        }
        let mut written = Vec::with_capacity(batches.len());
        for (batch, keys) in batches.iter().zip(&keys) {
            let before = (deltas.inserted, deltas.duplicates, duplicates.len());
            insert_rows(&tx, batch, keys, &mut deltas, &mut duplicates)?;
            written.push(Written {
                stored: deltas.inserted - before.0,
                duplicates: deltas.duplicates - before.1,
                first_duplicates: duplicates[before.2..].to_vec(),
            });
            written_columns.extend(optional_columns(batch).into_iter().map(|(name, _)| name));
        }
        deltas.write(&tx, &last)?;
        mark_sparse_columns(&tx, &written_columns)?;
        tx.commit()?;
        self.counters
            .rows_written
            .fetch_add(deltas.inserted, Ordering::Relaxed);
        self.counters
            .duplicates_rejected
            .fetch_add(deltas.duplicates, Ordering::Relaxed);
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        self.duplicate_count += deltas.duplicates;
        let room = DUPLICATES_NAMED.saturating_sub(self.duplicates.len());
        self.duplicates.extend(duplicates.into_iter().take(room));
        Ok(written)
    }
}

/// Records which sparse columns now hold values (see `schema::SPARSE_COLUMNS`).
fn mark_sparse_columns(tx: &Transaction<'_>, written: &[&str]) -> Result<()> {
    let mut mark =
        tx.prepare_cached("INSERT OR IGNORE INTO af_meta (key, value) VALUES (?1, 1)")?;
    for column in SPARSE_COLUMNS.iter().filter(|c| written.contains(c)) {
        mark.execute([format!("has:{column}")])?;
    }
    Ok(())
}

/// The integer key of each request id, creating the missing ones.
fn request_keys(
    tx: &Transaction<'_>,
    cache: &mut HashMap<String, i64>,
    ids: &[String],
) -> Result<Vec<i64>> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO af_requests (request_id) VALUES (?1) ON CONFLICT (request_id) DO NOTHING",
    )?;
    let mut select =
        tx.prepare_cached("SELECT request_key FROM af_requests WHERE request_id = ?1")?;
    ids.iter()
        .map(|id| {
            if let Some(&key) = cache.get(id) {
                return Ok(key);
            }
            insert.execute([id])?;
            let key: i64 = select.query_row([id], |r| r.get(0))?;
            cache.insert(id.clone(), key);
            Ok(key)
        })
        .collect()
}

/// A borrowed optional column, typed for binding.
enum ColumnRef<'a> {
    Text(&'a TextColumn),
    Int(&'a [Option<i64>]),
    Code(&'a [u8]),
    Real(&'a [f64]),
    ListI32(&'a ListColumn<i32>),
    ListF32(&'a ListColumn<f32>),
    Flag(&'a [bool]),
}

/// The optional columns present in a batch, in the order they are bound after the four
/// columns every row has.
fn optional_columns(b: &Batch) -> Vec<(&'static str, ColumnRef<'_>)> {
    use ColumnRef::*;
    let all = [
        ("session_id", b.session_id.as_ref().map(Text)),
        ("token_id", b.token_id.as_deref().map(Int)),
        ("token_text", b.token_text.as_ref().map(Text)),
        ("think_phase", b.think_phase.as_deref().map(Code)),
        ("segment_idx", b.segment_idx.as_deref().map(Int)),
        ("zone", b.zone.as_deref().map(Code)),
        (
            "manifold_confidence",
            b.manifold_confidence.as_deref().map(Real),
        ),
        ("cluster_id", b.cluster_id.as_deref().map(Int)),
        (
            "cluster_probability",
            b.cluster_probability.as_deref().map(Real),
        ),
        ("router_entropy", b.router_entropy.as_deref().map(Real)),
        (
            "expert_load_balance",
            b.expert_load_balance.as_deref().map(Real),
        ),
        ("sink_token_mass", b.sink_token_mass.as_deref().map(Real)),
        ("model_id", b.model_id.as_ref().map(Text)),
        ("top_k_positions", b.top_k_positions.as_ref().map(ListI32)),
        ("top_k_scores", b.top_k_scores.as_ref().map(ListF32)),
        (
            "capture_layer_ids",
            b.capture_layer_ids.as_ref().map(ListI32),
        ),
        ("top_expert_ids", b.top_expert_ids.as_ref().map(ListI32)),
        ("invalid", b.invalid.as_deref().map(Flag)),
    ];
    all.into_iter()
        .filter_map(|(name, col)| col.map(|c| (name, c)))
        .collect()
}

/// `INSERT` of `rows` rows. One row skips duplicates (`DO NOTHING`); several rows fail as a
/// whole on a duplicate, and the caller redoes them one by one.
fn insert_sql(optional: &[(&str, ColumnRef<'_>)], rows: usize) -> String {
    let mut columns = vec!["id", "fingerprint", "layout", "created_us"];
    columns.extend(optional.iter().map(|(name, _)| *name));
    let one = format!("({})", vec!["?"; columns.len()].join(", "));
    let values = vec![one; rows].join(", ");
    let conflict = if rows == 1 {
        " ON CONFLICT (id) DO NOTHING"
    } else {
        ""
    };
    format!(
        "INSERT INTO af_fingerprints ({}) VALUES {values}{conflict}",
        columns.join(", ")
    )
}

fn nan_null(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

fn code_null(c: u8) -> Option<u8> {
    (c != NULL_CODE).then_some(c)
}

fn list_blob<T: Copy, const W: usize>(
    col: &ListColumn<T>,
    row: usize,
    le: impl Fn(T) -> [u8; W],
) -> Option<Vec<u8>> {
    let values = col.row(row);
    (!values.is_empty()).then(|| values.iter().flat_map(|&v| le(v)).collect())
}

/// Rows per multi-row `INSERT`: one statement per chunk instead of per row roughly halves
/// SQLite's per-row overhead. 64 rows of at most 22 columns stay far below SQLite's limit
/// on bound parameters.
const CHUNK_ROWS: usize = 64;

fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}

/// Inserts a batch: chunks of `CHUNK_ROWS` in one statement each; a chunk that meets a
/// duplicate (rare) fails as a whole, atomically, and is redone row by row, keeping the first
/// of each `(request, step)`.
fn insert_rows<'b>(
    tx: &Transaction<'_>,
    b: &'b Batch,
    keys: &[i64],
    deltas: &mut Deltas<'b>,
    duplicates: &mut Vec<(String, i64)>,
) -> Result<()> {
    let optional = optional_columns(b);
    let width = 4 + optional.len();
    let ids: Vec<i64> = (0..b.rows())
        .map(|row| row_id(keys[b.request_index[row] as usize], b.steps[row]))
        .collect();
    let inserted = |deltas: &mut Deltas<'b>, row: usize| {
        deltas.add(SummaryRow {
            id: ids[row],
            phase: b.think_phase.as_ref().and_then(|p| code_null(p[row])),
            zone: b.zone.as_ref().and_then(|z| code_null(z[row])),
            confidence: b
                .manifold_confidence
                .as_ref()
                .and_then(|c| nan_null(c[row])),
            cluster_id: b.cluster_id.as_ref().and_then(|c| c[row]),
            created_us: b.created_us[row],
            layout: b.layout,
            invalid: b.invalid.as_ref().is_some_and(|f| f[row]),
            fingerprint: &b.fingerprints[row * FINGERPRINT_DIM..(row + 1) * FINGERPRINT_DIM],
            router_entropy: b.router_entropy.as_ref().and_then(|c| nan_null(c[row])),
            experts: b.top_expert_ids.as_ref().map_or(&[], |c| c.row(row)),
            token_text: b.token_text.as_ref().and_then(|t| t.get(row)),
        })
    };
    let mut single_rows: Vec<usize> = Vec::new();
    let full_chunks = b.rows() / CHUNK_ROWS;
    if full_chunks > 0 {
        let mut chunk = tx.prepare_cached(&insert_sql(&optional, CHUNK_ROWS))?;
        for c in 0..full_chunks {
            let rows = c * CHUNK_ROWS..(c + 1) * CHUNK_ROWS;
            for (i, row) in rows.clone().enumerate() {
                bind_row(&mut chunk, i * width, b, &optional, ids[row], row)?;
            }
            match chunk.raw_execute() {
                Ok(_) => rows.for_each(|row| inserted(deltas, row)),
                Err(e) if is_constraint(&e) => single_rows.extend(rows),
                Err(e) => return Err(e.into()),
            }
        }
    }
    single_rows.extend(full_chunks * CHUNK_ROWS..b.rows());
    let mut single = tx.prepare_cached(&insert_sql(&optional, 1))?;
    for row in single_rows {
        bind_row(&mut single, 0, b, &optional, ids[row], row)?;
        if single.raw_execute()? == 1 {
            inserted(deltas, row);
        } else {
            deltas.duplicates += 1;
            if duplicates.len() < DUPLICATES_NAMED {
                duplicates.push((
                    b.request_ids[b.request_index[row] as usize].clone(),
                    b.steps[row],
                ));
            }
        }
    }
    Ok(())
}

/// Binds one row's values at parameters `base + 1 ..`.
fn bind_row(
    stmt: &mut Statement<'_>,
    base: usize,
    b: &Batch,
    optional: &[(&str, ColumnRef<'_>)],
    id: i64,
    row: usize,
) -> Result<()> {
    let fp = &b.fingerprints[row * FINGERPRINT_DIM..(row + 1) * FINGERPRINT_DIM];
    let mut blob = [0u8; FINGERPRINT_DIM * 4];
    for (dst, v) in blob.chunks_exact_mut(4).zip(fp) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
    stmt.raw_bind_parameter(base + 1, id)?;
    stmt.raw_bind_parameter(base + 2, &blob[..])?;
    stmt.raw_bind_parameter(base + 3, b.layout.code())?;
    stmt.raw_bind_parameter(base + 4, b.created_us[row])?;
    bind_optional(stmt, base + 4, optional, row)
}

fn bind_optional(
    stmt: &mut Statement<'_>,
    base: usize,
    optional: &[(&str, ColumnRef<'_>)],
    row: usize,
) -> Result<()> {
    for (i, (_, column)) in optional.iter().enumerate() {
        let at = base + 1 + i;
        match column {
            ColumnRef::Text(c) => stmt.raw_bind_parameter(at, c.get(row))?,
            ColumnRef::Int(c) => stmt.raw_bind_parameter(at, c[row])?,
            ColumnRef::Code(c) => stmt.raw_bind_parameter(at, code_null(c[row]))?,
            ColumnRef::Real(c) => stmt.raw_bind_parameter(at, nan_null(c[row]))?,
            ColumnRef::ListI32(c) => {
                stmt.raw_bind_parameter(at, list_blob(c, row, i32::to_le_bytes))?
            }
            ColumnRef::ListF32(c) => {
                stmt.raw_bind_parameter(at, list_blob(c, row, f32::to_le_bytes))?
            }
            ColumnRef::Flag(c) => stmt.raw_bind_parameter(at, i64::from(c[row]))?,
        }
    }
    Ok(())
}
