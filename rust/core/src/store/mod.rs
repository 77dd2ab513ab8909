//! The fingerprint store: a WAL-mode SQLite database that speaks the seed's schema version 1,
//! written by a background thread, read with plain queries. Design notes: docs/store.md.

pub mod batch;
pub mod checks;
mod connection;
pub mod export;
mod export_rows;
pub mod messages;
pub mod options;
mod queue;
pub mod read;
pub mod runs;
pub mod schema;
mod summary;
pub mod time;
pub(crate) mod triggers;
pub mod vectors;
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
pub use schema::Opened;
pub use writer::Written;
use writer::{Message, WriterCounters};

/// What a tracked append gives back: the batch's outcome, once its transaction committed.
pub struct Ticket {
    outcome: crossbeam_channel::Receiver<Result<Written>>,
    rows: usize,
}

impl Ticket {
    /// Waits for the commit. An error means none of the batch's rows were stored.
    pub fn wait(&self) -> Result<Written> {
        self.outcome.recv().unwrap_or_else(|_| {
            Err(CoreError::Store(
                "the store's writer stopped before this batch was committed".into(),
            ))
        })
    }

    /// The outcome if the batch is committed already, without waiting.
    pub fn try_wait(&self) -> Option<Result<Written>> {
        match self.outcome.try_recv() {
            Ok(r) => Some(r),
            Err(crossbeam_channel::TryRecvError::Empty) => None,
            Err(crossbeam_channel::TryRecvError::Disconnected) => Some(Err(CoreError::Store(
                "the store's writer stopped before this batch was committed".into(),
            ))),
        }
    }

    /// Rows in the batch (0 for an empty one, whose ticket is answered at once).
    pub fn rows(&self) -> usize {
        self.rows
    }
}

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
    opened: Opened,
    opts: StoreOptions,
}

impl Store {
    /// Opens (creating if needed) the database at `path`. A database made with the seed's own
    /// schema is converted in place, in one transaction.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store> {
        connection::refuse_read_only(path)?;
        schema::refuse_foreign(path, opts.init)?;
        let mut conn = connection::open(path, &opts)?;
        let opened = schema::ensure_schema(&mut conn, &path.display().to_string(), opts.init)?;
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
            opened,
            opts,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening did: rows taken over from a seed database, rows quarantined, an upgrade.
    pub fn opened(&self) -> Opened {
        self.opened
    }

    fn closed(&self) -> CoreError {
        CoreError::Store(format!("the store {} is closed", self.path.display()))
    }

    /// Checks a batch and queues it for the writer, waiting while the queue is full. Returns
    /// the number of rows queued. Rows are durable once a later `flush` returns.
    pub fn append(&self, batch: Batch) -> Result<usize> {
        self.queue(batch, None)
    }

    /// As `append`, and the ticket tells what became of the batch once it is committed: rows
    /// stored and rows refused as duplicates.
    pub fn append_tracked(&self, mut batch: Batch) -> Result<Ticket> {
        batch.validate(time::now_us())?;
        self.queue_tracked(batch)
    }

    fn queue_tracked(&self, batch: Batch) -> Result<Ticket> {
        let (reply, outcome) = crossbeam_channel::bounded(1);
        let rows = self.queue_valid(batch, Some(reply.clone()))?;
        if rows == 0 {
            let _ = reply.send(Ok(Written::default()));
        }
        Ok(Ticket { outcome, rows })
    }

    fn queue(
        &self,
        mut batch: Batch,
        reply: Option<crossbeam_channel::Sender<Result<Written>>>,
    ) -> Result<usize> {
        batch.validate(time::now_us())?;
        self.queue_valid(batch, reply)
    }

    /// Queues a batch that `validate` passed.
    fn queue_valid(
        &self,
        batch: Batch,
        reply: Option<crossbeam_channel::Sender<Result<Written>>>,
    ) -> Result<usize> {
        let rows = batch.rows();
        if rows == 0 {
            return Ok(0);
        }
        let sender = self.sender.read().unwrap_or_else(|e| e.into_inner());
        let sender = sender.as_ref().ok_or_else(|| self.closed())?;
        self.budget.acquire(rows);
        if sender.send(Message::Rows(Box::new(batch), reply)).is_err() {
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

    /// Appends the batches of decoded messages, tracked; all are checked before any is
    /// queued, so a refused batch leaves nothing queued.
    pub fn append_decoded(&self, decoded: messages::Decoded) -> Result<Vec<Ticket>> {
        let mut batches = decoded.batches;
        let now = time::now_us();
        for batch in &mut batches {
            batch.validate(now)?;
        }
        batches
            .into_iter()
            .map(|batch| self.queue_tracked(batch))
            .collect()
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

    /// Rows matching `q`'s filters (its limit and order aside).
    pub fn count(&self, q: &Query) -> Result<u64> {
        self.with_reader(|conn| read::count(conn, q))
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

    /// The discovery job's writes, in one transaction (`runs::write`).
    pub fn write_discovery(
        &self,
        statements: &[runs::Statement],
        clusters: &runs::ClusterColumns<'_>,
    ) -> Result<u64> {
        if self.is_closed() {
            return Err(self.closed());
        }
        runs::write(&self.path, &self.opts, statements, clusters)
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
