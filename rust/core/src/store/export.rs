//! Parquet export with arrow-rs: one folder per day (`day=YYYY-MM-DD`, hive style, so pyarrow,
//! polars and duckdb read the partition as a column), row groups of 128k rows, snappy.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rusqlite::Connection;

use super::batch::{MAX_STEP, STEP_BITS};
use super::connection;
use super::export_rows::{ColumnSet, ExportRows};
use super::read::{CREATED_COLUMN, Query, RequestNames, candidate_ids};
use super::time::{MICROS_PER_DAY, format_day};
use crate::error::{CoreError, Result};
use crate::fingerprint::FINGERPRINT_DIM;

const ROW_GROUP: usize = 1 << 17;
/// Rows handed from a reader to the encoder at a time: small enough that reading and encoding
/// overlap closely (the encoder buffers them into row groups), large enough to amortise.
const CHUNK: usize = 1 << 14;

/// What an export wrote.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub rows: u64,
    /// `(day, file, rows)` for each file written.
    pub files: Vec<(String, PathBuf, u64)>,
}

pub(super) fn fingerprint_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

fn list_field(t: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", t, true)))
}

/// The exported columns: the seed's names, typed (zone and phase as text, time as a UTC
/// timestamp, the fingerprint as a fixed list of 20 float32, packed lists as lists).
pub fn export_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("request_id", DataType::Utf8, false),
        Field::new("step", DataType::Int64, false),
        Field::new("session_id", DataType::Utf8, true),
        Field::new("token_id", DataType::Int64, true),
        Field::new("token_text", DataType::Utf8, true),
        Field::new("think_phase", DataType::Utf8, true),
        Field::new("segment_idx", DataType::Int64, true),
        Field::new(
            "fingerprint",
            DataType::FixedSizeList(fingerprint_field(), FINGERPRINT_DIM as i32),
            false,
        ),
        Field::new("manifold_zone", DataType::Utf8, true),
        Field::new("manifold_confidence", DataType::Float64, true),
        Field::new("cluster_id", DataType::Int64, true),
        Field::new("cluster_probability", DataType::Float64, true),
        Field::new("router_entropy", DataType::Float64, true),
        Field::new("expert_load_balance", DataType::Float64, true),
        Field::new("sink_token_mass", DataType::Float64, true),
        Field::new("top_k_positions", list_field(DataType::Int32), true),
        Field::new("top_k_scores", list_field(DataType::Float32), true),
        Field::new("capture_layer_ids", list_field(DataType::Int32), true),
        Field::new("top_expert_ids", list_field(DataType::Int32), true),
        Field::new("schema_version", DataType::Int32, false),
        Field::new("model_id", DataType::Utf8, true),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        // Not a seed column: the vector breaks its layout's rules (docs/store.md).
        Field::new("invalid", DataType::Boolean, false),
    ]))
}

fn parquet_error(e: parquet::errors::ParquetError) -> CoreError {
    CoreError::Store(format!("writing Parquet: {e}"))
}

/// One day's file, written under a temporary name and renamed when complete.
struct DayFile {
    day: String,
    tmp: PathBuf,
    path: PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
}

/// The encoding half of an export: Arrow batches into Parquet files, one per day. It runs on
/// its own thread while the caller's thread reads SQLite, which roughly doubles throughput.
struct Encoder {
    dir: PathBuf,
    schema: SchemaRef,
    props: WriterProperties,
    files: BTreeMap<i64, DayFile>,
    /// Day folders this export made, removed again if it fails.
    created: Vec<PathBuf>,
}

impl Encoder {
    fn write(&mut self, day: i64, rows: ExportRows) -> Result<()> {
        if !self.files.contains_key(&day) {
            let name = format_day(day * MICROS_PER_DAY);
            let folder = self.dir.join(format!("day={name}"));
            if !folder.exists() {
                self.created.push(folder.clone());
            }
            fs::create_dir_all(&folder)?;
            let path = folder.join("part-0.parquet");
            let tmp = folder.join(".part-0.parquet.tmp");
            let writer = ArrowWriter::try_new(
                File::create(&tmp)?,
                self.schema.clone(),
                Some(self.props.clone()),
            )
            .map_err(parquet_error)?;
            self.files.insert(
                day,
                DayFile {
                    day: name,
                    tmp,
                    path,
                    writer,
                    rows: 0,
                },
            );
        }
        let file = self.files.get_mut(&day).expect("inserted above");
        file.rows += rows.len() as u64;
        let batch = rows.finish(&self.schema)?;
        file.writer.write(&batch).map_err(parquet_error)
    }

    /// After a failure: the partial files, and the day folders this export created.
    fn remove_partial_files(&self) {
        for file in self.files.values() {
            let _ = fs::remove_file(&file.tmp);
        }
        for folder in &self.created {
            let _ = fs::remove_dir(folder); // only if empty: an earlier export's files stay
        }
    }

    /// Closes every file, then renames them all into place. If any step fails, nothing of
    /// this export stays: files renamed already are removed with the rest.
    fn finish(mut self) -> Result<Vec<(String, PathBuf, u64)>> {
        let mut closed = Vec::new();
        let mut failure = None;
        for (_, file) in std::mem::take(&mut self.files) {
            if failure.is_none()
                && let Err(e) = file.writer.close()
            {
                failure = Some(parquet_error(e));
            }
            closed.push((file.day, file.tmp, file.path, file.rows));
        }
        if failure.is_none() {
            for (i, (_, tmp, path, _)) in closed.iter().enumerate() {
                if let Err(e) = fs::rename(tmp, path) {
                    for (_, _, done, _) in &closed[..i] {
                        let _ = fs::remove_file(done);
                    }
                    failure = Some(e.into());
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for (_, tmp, _, _) in &closed {
                let _ = fs::remove_file(tmp);
            }
            self.remove_partial_files();
            return Err(e);
        }
        Ok(closed
            .into_iter()
            .map(|(day, _, path, rows)| (day, path, rows))
            .collect())
    }
}

/// Refuses to mix a new export with an old one unless asked to replace it. A day folder
/// without a Parquet file (left by a failed export, or made by hand) is no export.
fn prepare_dir(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(CoreError::Invalid(format!(
            "{} is a file; export writes a folder (one day=YYYY-MM-DD folder per day)",
            dir.display()
        )));
    }
    fs::create_dir_all(dir)
        .map_err(|e| CoreError::Store(format!("cannot create {}: {e}", dir.display())))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("day=") || !entry.path().is_dir() {
            continue;
        }
        let holds_parquet = fs::read_dir(entry.path())?
            .filter_map(|f| f.ok())
            .any(|f| f.path().extension().is_some_and(|e| e == "parquet"));
        if !holds_parquet {
            continue;
        }
        if !overwrite {
            return Err(CoreError::Invalid(format!(
                "{} already holds an export ({name}); choose an empty folder, or replace it with \
                 overwrite=True (--overwrite on the command line)",
                dir.display()
            )));
        }
        for file in fs::read_dir(entry.path())? {
            let file = file?.path();
            if file.extension().is_some_and(|e| e == "parquet") {
                fs::remove_file(&file)?;
            }
        }
    }
    Ok(())
}

/// Writer settings: snappy; dictionaries only for the text columns, where values repeat
/// (dictionary-encoding floats costs time and saves nothing).
fn writer_properties() -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .set_dictionary_enabled(false);
    for column in [
        "request_id",
        "session_id",
        "think_phase",
        "manifold_zone",
        "model_id",
    ] {
        props = props.set_column_dictionary_enabled(column.into(), true);
    }
    // Fingerprint floats are most of the bytes and snappy saves 5% of them: plain is faster.
    props
        .set_column_compression("fingerprint.list.item".into(), Compression::UNCOMPRESSED)
        .build()
}

/// Reads the rows of ids `lo..=hi` on `conn` and sends them to the encoder in row groups.
/// Returns the rows read; `read` counts them across readers for progress.
fn read_part(
    conn: &Connection,
    (lo, hi): (i64, i64),
    q: &Query,
    to_encoder: &crossbeam_channel::Sender<(i64, ExportRows)>,
    read: &AtomicU64,
) -> Result<u64> {
    // The time check only when there is a time filter: it is evaluated for every row.
    let timed = q.since_us.is_some() || q.until_us.is_some();
    let columns = ColumnSet::of(conn)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM af_fingerprints f WHERE f.id BETWEEN ?1 AND ?2 {} ORDER BY f.id",
        columns.select_sql(),
        if timed {
            "AND f.created_us >= ?3 AND f.created_us < ?4"
        } else {
            ""
        }
    ))?;
    let (since, until) = (
        q.since_us.unwrap_or(i64::MIN),
        q.until_us.unwrap_or(i64::MAX),
    );
    let mut cursor = if timed {
        stmt.query(rusqlite::params![lo, hi, since, until])?
    } else {
        stmt.query(rusqlite::params![lo, hi])?
    };
    let mut names = RequestNames::new(conn)?;
    let mut pending: BTreeMap<i64, ExportRows> = BTreeMap::new();
    let mut total = 0u64;
    // A send fails only when the encoder stopped on an error, which the caller reports.
    while let Some(row) = cursor.next()? {
        let created: i64 = row.get(CREATED_COLUMN)?;
        let day = created.div_euclid(MICROS_PER_DAY);
        let rows = pending
            .entry(day)
            .or_insert_with(|| ExportRows::new(columns));
        rows.push(row, &mut names)?;
        let full = rows.len() >= CHUNK;
        if full
            && to_encoder
                .send((day, std::mem::replace(rows, ExportRows::new(columns))))
                .is_err()
        {
            return Ok(total);
        }
        total += 1;
        if total % 4096 == 0 {
            read.fetch_add(4096, Ordering::Relaxed);
        }
    }
    read.fetch_add(total % 4096, Ordering::Relaxed);
    for (day, rows) in pending {
        if !rows.is_empty() && to_encoder.send((day, rows)).is_err() {
            break;
        }
    }
    Ok(total)
}

/// Splits an id range into `parts` ranges of about equal request keys.
fn split_ids((lo, hi): (i64, i64), parts: usize) -> Vec<(i64, i64)> {
    let (first, last) = (lo >> STEP_BITS, hi >> STEP_BITS);
    let parts = (parts as i64).clamp(1, last - first + 1);
    let per = (last - first + parts) / parts;
    (0..parts)
        .map(|p| {
            let start = (first + p * per).max(first);
            let end = (first + (p + 1) * per - 1).min(last);
            (
                lo.max(start << STEP_BITS),
                hi.min((end << STEP_BITS) | MAX_STEP),
            )
        })
        .filter(|(a, b)| a <= b)
        .collect()
}

/// Exports with one reader per core (SQLite reads dominate; WAL lets readers run side by
/// side), each on its own connection to `path`, and one encoder thread.
pub fn export_parquet(
    path: &Path,
    conn: &Connection,
    dir: &Path,
    q: &Query,
    overwrite: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportReport> {
    prepare_dir(dir, overwrite)?;
    let mut report = ExportReport::default();
    let Some(range) = candidate_ids(conn, q)? else {
        progress(0);
        return Ok(report);
    };
    let parts = split_ids(range, crate::parallel::num_threads());
    let others = parts[1..]
        .iter()
        .map(|_| connection::open_reader(path))
        .collect::<Result<Vec<_>>>()?;
    let mut encoder = Encoder {
        dir: dir.to_path_buf(),
        schema: export_schema(),
        props: writer_properties(),
        files: BTreeMap::new(),
        created: Vec::new(),
    };
    let read_so_far = AtomicU64::new(0);
    let (to_encoder, chunks) = crossbeam_channel::bounded::<(i64, ExportRows)>(8);
    let (read, encoded) = std::thread::scope(|scope| {
        let encoding = scope.spawn(move || -> Result<Encoder> {
            for (day, rows) in chunks {
                if let Err(e) = encoder.write(day, rows) {
                    encoder.remove_partial_files();
                    return Err(e);
                }
            }
            Ok(encoder)
        });
        let readers: Vec<_> = others
            .into_iter()
            .zip(&parts[1..])
            .map(|(other, &part)| {
                let to_encoder = to_encoder.clone();
                let (read_so_far, q) = (&read_so_far, q);
                scope.spawn(move || read_part(&other, part, q, &to_encoder, read_so_far))
            })
            .collect();
        // This thread reads the first part, then reports progress until the others finish.
        let mut read = read_part(conn, parts[0], q, &to_encoder, &read_so_far);
        drop(to_encoder);
        while readers.iter().any(|r| !r.is_finished()) {
            progress(read_so_far.load(Ordering::Relaxed));
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        for reader in readers {
            let part = reader
                .join()
                .unwrap_or_else(|_| Err(CoreError::Store("an export reader panicked".into())));
            read = match (read, part) {
                (Ok(a), Ok(b)) => Ok(a + b),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
        }
        progress(read_so_far.load(Ordering::Relaxed));
        let encoded = encoding
            .join()
            .unwrap_or_else(|_| Err(CoreError::Store("the Parquet encoder panicked".into())));
        (read, encoded)
    });
    // Files are renamed into place only when everything was read and encoded: a failed export
    // leaves no file that looks complete.
    match (read, encoded) {
        (Ok(rows), Ok(encoder)) => {
            report.rows = rows;
            report.files = encoder.finish()?;
            Ok(report)
        }
        (read, encoded) => {
            if let Ok(encoder) = &encoded {
                encoder.remove_partial_files();
            }
            Err(read.err().or(encoded.err()).expect("one side failed"))
        }
    }
}
