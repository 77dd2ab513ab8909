//! The fingerprint store: a WAL-mode SQLite database that speaks the seed's schema version 1,
//! written by a background thread, read with plain queries. Design notes: docs/store.md.

pub mod batch;
mod connection;
pub mod export;
mod export_rows;
pub mod messages;
pub mod options;
mod queue;
pub mod read;
pub mod schema;
mod summary;
pub mod time;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use rusqlite::Connection;

pub use batch::{Batch, ListColumn, NULL_CODE, THINK_PHASES, TextColumn};
pub use export::ExportReport;
pub use options::{DuplicatePolicy, StoreOptions, Synchronous};
pub use read::{Query, Rows};
pub use rusqlite::types::Value as SqlValue;

use crate::error::{CoreError, Result};
use queue::RowBudget;
use writer::{Message, WriterCounters};

/// What this handle has done, for `stats()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterStats {
    pub rows_written: u64,
    pub duplicates_rejected: u64,
    pub transactions: u64,
    pub failed_rows: u64,
    pub queued_rows: u64,
}

/// An open store. Cheap to share between threads: `append` and `flush` take `&self`.
pub struct Store {
    path: PathBuf,
    sender: RwLock<Option<Sender<Message>>>,
    handle: Mutex<Option<JoinHandle<()>>>,
    budget: Arc<RowBudget>,
    counters: Arc<WriterCounters>,
    /// Queries run here; `None` once closed, so that close() releases every connection.
    reader: Mutex<Option<Connection>>,
    migrated_rows: u64,
}

impl Store {
    /// Opens (creating if needed) the database at `path`. A database made with the seed's own
    /// schema is converted in place, in one transaction.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store> {
        let mut conn = connection::open(path, &opts)?;
        let migrated_rows = schema::ensure_schema(&mut conn)?;
        conn.execute_batch(connection::READ_PRAGMAS)?;
        let budget = Arc::new(RowBudget::new(opts.max_queued_rows));
        let counters = Arc::new(WriterCounters::default());
        let thread = writer::spawn(path, &opts, budget.clone(), counters.clone())?;
        Ok(Store {
            path: path.to_path_buf(),
            sender: RwLock::new(Some(thread.sender)),
            handle: Mutex::new(Some(thread.handle)),
            budget,
            counters,
            reader: Mutex::new(Some(conn)),
            migrated_rows,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows taken over from a seed database when it was opened.
    pub fn migrated_rows(&self) -> u64 {
        self.migrated_rows
    }

    fn closed(&self) -> CoreError {
        CoreError::Store(format!("the store {} is closed", self.path.display()))
    }

    /// Checks a batch and queues it for the writer, waiting while the queue is full. Returns
    /// the number of rows queued. Rows are durable once a later `flush` returns.
    pub fn append(&self, mut batch: Batch) -> Result<usize> {
        batch.validate(time::now_us())?;
        let rows = batch.rows();
        if rows == 0 {
            return Ok(0);
        }
        let sender = self.sender.read().unwrap_or_else(|e| e.into_inner());
        let sender = sender.as_ref().ok_or_else(|| self.closed())?;
        self.budget.acquire(rows);
        if sender.send(Message::Rows(Box::new(batch))).is_err() {
            self.budget.release(rows);
            return Err(self.writer_stopped());
        }
        Ok(rows)
    }

    fn writer_stopped(&self) -> CoreError {
        CoreError::Store(format!(
            "the writer thread of {} has stopped; rows appended since the last flush were not \
             acknowledged",
            self.path.display()
        ))
    }

    /// Appends the batches of decoded messages; returns the rows queued.
    pub fn append_decoded(&self, decoded: messages::Decoded) -> Result<usize> {
        decoded
            .batches
            .into_iter()
            .map(|batch| self.append(batch))
            .sum()
    }

    /// Returns once every row appended before the call is committed (the acknowledgement),
    /// or raises the first write failure or (policy `error`) duplicate since the last flush.
    pub fn flush(&self) -> Result<()> {
        let (ack, done) = crossbeam_channel::bounded(1);
        {
            let sender = self.sender.read().unwrap_or_else(|e| e.into_inner());
            let sender = sender.as_ref().ok_or_else(|| self.closed())?;
            sender
                .send(Message::Flush(ack))
                .map_err(|_| self.writer_stopped())?;
        }
        done.recv().map_err(|_| self.writer_stopped())?
    }

    /// Flushes and stops the writer. Closing twice is fine.
    pub fn close(&self) -> Result<()> {
        if self
            .sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Ok(());
        }
        let flushed = self.flush();
        drop(
            self.sender
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        if let Some(handle) = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.join().map_err(|_| self.writer_stopped())?;
        }
        drop(self.reader.lock().unwrap_or_else(|e| e.into_inner()).take());
        flushed
    }

    pub fn is_closed(&self) -> bool {
        self.sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Runs `f` on the query connection.
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        f(reader.as_ref().ok_or_else(|| self.closed())?)
    }

    pub fn read(&self, q: &Query) -> Result<Rows> {
        self.with_reader(|conn| read::read(conn, q))
    }

    /// Runs one read-only SQL statement with positional parameters; returns the column names
    /// and the rows. For the seed's queries and views: use this rather than a second SQLite
    /// library in the same process (see docs/store.md).
    pub fn sql(&self, sql: &str, params: &[SqlValue]) -> Result<(Vec<String>, Vec<Vec<SqlValue>>)> {
        self.with_reader(|conn| read::sql(conn, sql, params))
    }

    /// Writes the rows matching `q`'s time filters as Parquet under `dir`, one folder per day.
    pub fn export_parquet(
        &self,
        dir: &Path,
        q: &Query,
        overwrite: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ExportReport> {
        self.with_reader(|conn| {
            export::export_parquet(&self.path, conn, dir, q, overwrite, progress)
        })
    }

    pub fn writer_stats(&self) -> WriterStats {
        let c = &self.counters;
        WriterStats {
            rows_written: c.rows_written.load(Ordering::Relaxed),
            duplicates_rejected: c.duplicates_rejected.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            failed_rows: c.failed_rows.load(Ordering::Relaxed),
            queued_rows: self.budget.queued() as u64,
        }
    }
}

impl Drop for Store {
    /// Rows appended but not flushed are still written: the writer drains its queue first.
    fn drop(&mut self) {
        let _ = self.close();
    }
}
