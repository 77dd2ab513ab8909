//! Rows on their way to Parquet, accumulated straight into Arrow builders: no allocation per
//! row (text goes into one buffer per column), which was a quarter of an export's time.

use std::sync::Arc;

use arrow_array::builder::{
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow_array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Int32Array, Int64Array,
};
use arrow_array::{RecordBatch, TimestampMicrosecondArray};
use arrow_schema::SchemaRef;
use rusqlite::{Connection, Row};

use super::batch::{MAX_STEP, STEP_BITS, THINK_PHASES};
use super::export::fingerprint_field;
use super::read::{
    CREATED_COLUMN, INVALID_COLUMN, RequestNames, SELECT_COLUMNS, Values, decode_fingerprint,
};
use super::schema::SPARSE_COLUMNS;
use crate::error::{CoreError, Result};
use crate::fingerprint::FINGERPRINT_DIM;
use crate::zone::Zone;

fn little_i32(b: &[u8]) -> impl Iterator<Item = Option<i32>> + '_ {
    b.chunks_exact(4)
        .map(|c| Some(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
}

fn little_f32(b: &[u8]) -> impl Iterator<Item = Option<f32>> + '_ {
    b.chunks_exact(4)
        .map(|c| Some(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
}

/// Which columns of `read::SELECT_COLUMNS` an export reads: all but the sparse columns that
/// hold no value anywhere (`schema::SPARSE_COLUMNS`). Asking SQLite for a NULL costs about as
/// much as for a value; skipping those columns made exports about a fifth faster.
#[derive(Debug, Clone, Copy)]
pub struct ColumnSet {
    skipped: u32,
}

impl ColumnSet {
    pub fn of(conn: &Connection) -> Result<Self> {
        let mut marked = conn.prepare("SELECT key FROM af_meta WHERE key LIKE 'has:%'")?;
        let marked: Vec<String> = marked
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let names: Vec<&str> = select_names();
        let mut skipped = 0;
        for column in SPARSE_COLUMNS {
            if !marked
                .iter()
                .any(|m| m.strip_prefix("has:") == Some(column))
            {
                let index = names
                    .iter()
                    .position(|n| *n == column)
                    .expect("a selected column");
                skipped |= 1 << index;
            }
        }
        Ok(Self { skipped })
    }

    fn reads(self, column: usize) -> bool {
        self.skipped >> column & 1 == 0
    }

    /// `read::SELECT_COLUMNS` with NULL in place of the skipped columns (indexes unchanged).
    pub fn select_sql(self) -> String {
        select_names()
            .iter()
            .enumerate()
            .map(|(i, name)| {
                if self.reads(i) {
                    format!("f.{name}")
                } else {
                    "NULL".into()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn select_names() -> Vec<&'static str> {
    SELECT_COLUMNS
        .split(',')
        .map(|c| c.trim().trim_start_matches("f."))
        .collect()
}

/// The columns of `export::export_schema()`, being built.
pub struct ExportRows {
    columns: ColumnSet,
    len: usize,
    id: Vec<i64>,
    request_id: StringBuilder,
    step: Vec<i64>,
    session_id: StringBuilder,
    token_id: Int64Builder,
    token_text: StringBuilder,
    think_phase: StringBuilder,
    segment_idx: Int64Builder,
    fingerprint: Vec<f32>,
    zone: StringBuilder,
    reals: [Float64Builder; 5],
    cluster_id: Int64Builder,
    top_k_positions: ListBuilder<Int32Builder>,
    top_k_scores: ListBuilder<Float32Builder>,
    capture_layer_ids: ListBuilder<Int32Builder>,
    top_expert_ids: ListBuilder<Int32Builder>,
    layout: Vec<i32>,
    model_id: StringBuilder,
    created_us: Vec<i64>,
    invalid: Vec<bool>,
}

impl ExportRows {
    pub fn new(columns: ColumnSet) -> Self {
        Self {
            columns,
            len: 0,
            id: Vec::new(),
            request_id: StringBuilder::new(),
            step: Vec::new(),
            session_id: StringBuilder::new(),
            token_id: Int64Builder::new(),
            token_text: StringBuilder::new(),
            think_phase: StringBuilder::new(),
            segment_idx: Int64Builder::new(),
            fingerprint: Vec::new(),
            zone: StringBuilder::new(),
            reals: Default::default(),
            cluster_id: Int64Builder::new(),
            top_k_positions: ListBuilder::new(Int32Builder::new()),
            top_k_scores: ListBuilder::new(Float32Builder::new()),
            capture_layer_ids: ListBuilder::new(Int32Builder::new()),
            top_expert_ids: ListBuilder::new(Int32Builder::new()),
            layout: Vec::new(),
            model_id: StringBuilder::new(),
            created_us: Vec::new(),
            invalid: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one row of `read::SELECT_COLUMNS`.
    pub fn push(&mut self, row: &Row<'_>, names: &mut RequestNames<'_>) -> Result<()> {
        let id: i64 = row.get(0)?;
        let v = Values { row, id };
        self.id.push(id);
        self.request_id.append_value(names.name(id >> STEP_BITS)?);
        self.step.push(id & MAX_STEP);
        // Skipped columns get their NULLs in bulk in finish().
        let read = |column: usize| self.columns.reads(column);
        if read(1) {
            self.session_id.append_option(v.text_ref(1)?);
        }
        if read(2) {
            self.token_id.append_option(v.int(2)?);
        }
        if read(3) {
            self.token_text.append_option(v.text_ref(3)?);
        }
        if read(4) {
            let phase = v.code(4)?;
            self.think_phase
                .append_option(phase.and_then(|p| THINK_PHASES.get(p as usize).copied()));
        }
        self.segment_idx.append_option(v.int(5)?);
        let blob = v.blob(6)?.ok_or_else(|| v.wrong(6, "a blob"))?;
        decode_fingerprint(id, blob, &mut self.fingerprint)?;
        let zone = v.code(7)?;
        self.zone
            .append_option(zone.and_then(|z| Zone::ALL.get(z as usize).map(|z| z.name())));
        // manifold_confidence, cluster_probability, router_entropy, expert_load_balance,
        // sink_token_mass: columns 8 and 10..=13.
        for (builder, column) in self.reals.iter_mut().zip([8, 10, 11, 12, 13]) {
            if self.columns.reads(column) {
                builder.append_option(v.real(column)?);
            }
        }
        self.cluster_id.append_option(v.int(9)?);
        if read(14) {
            self.top_k_positions
                .append_option(v.blob(14)?.map(little_i32));
        }
        if read(15) {
            self.top_k_scores.append_option(v.blob(15)?.map(little_f32));
        }
        if read(16) {
            self.capture_layer_ids
                .append_option(v.blob(16)?.map(little_i32));
        }
        if read(17) {
            self.top_expert_ids
                .append_option(v.blob(17)?.map(little_i32));
        }
        let layout = v.int(18)?.ok_or_else(|| v.wrong(18, "a layout code"))?;
        self.layout
            .push(i32::try_from(layout).map_err(|_| v.wrong(18, "a layout code"))?);
        if read(19) {
            self.model_id.append_option(v.text_ref(19)?);
        }
        let created = v
            .int(CREATED_COLUMN)?
            .ok_or_else(|| v.wrong(CREATED_COLUMN, "a time"))?;
        self.created_us.push(created);
        self.invalid.push(v.flag(INVALID_COLUMN)?);
        self.len += 1;
        Ok(())
    }

    pub fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let (n, skip) = (self.len, |column: usize| !self.columns.reads(column));
        let texts = [
            (1, &mut self.session_id),
            (3, &mut self.token_text),
            (4, &mut self.think_phase),
            (19, &mut self.model_id),
        ];
        for (column, builder) in texts {
            if skip(column) {
                builder.append_nulls(n);
            }
        }
        if skip(2) {
            self.token_id.append_nulls(n);
        }
        for (builder, column) in self.reals.iter_mut().zip([8, 10, 11, 12, 13]) {
            if skip(column) {
                builder.append_nulls(n);
            }
        }
        for (column, builder) in [
            (14, &mut self.top_k_positions),
            (16, &mut self.capture_layer_ids),
            (17, &mut self.top_expert_ids),
        ] {
            if skip(column) {
                builder.append_nulls(n);
            }
        }
        if skip(15) {
            self.top_k_scores.append_nulls(n);
        }
        let [confidence, probability, router, balance, sink] = &mut self.reals;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(self.id)),
            Arc::new(self.request_id.finish()),
            Arc::new(Int64Array::from(self.step)),
            Arc::new(self.session_id.finish()),
            Arc::new(self.token_id.finish()),
            Arc::new(self.token_text.finish()),
            Arc::new(self.think_phase.finish()),
            Arc::new(self.segment_idx.finish()),
            Arc::new(FixedSizeListArray::new(
                fingerprint_field(),
                FINGERPRINT_DIM as i32,
                Arc::new(Float32Array::from(self.fingerprint)),
                None,
            )),
            Arc::new(self.zone.finish()),
            Arc::new(confidence.finish()),
            Arc::new(self.cluster_id.finish()),
            Arc::new(probability.finish()),
            Arc::new(router.finish()),
            Arc::new(balance.finish()),
            Arc::new(sink.finish()),
            Arc::new(self.top_k_positions.finish()),
            Arc::new(self.top_k_scores.finish()),
            Arc::new(self.capture_layer_ids.finish()),
            Arc::new(self.top_expert_ids.finish()),
            Arc::new(Int32Array::from(self.layout)),
            Arc::new(self.model_id.finish()),
            Arc::new(TimestampMicrosecondArray::from(self.created_us).with_timezone("UTC")),
            Arc::new(BooleanArray::from(self.invalid)),
        ];
        RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| CoreError::Store(format!("building an Arrow batch: {e}")))
    }
}
