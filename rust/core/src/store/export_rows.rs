//! Rows on their way to Parquet, accumulated straight into Arrow builders: no allocation per
//! row (text goes into one buffer per column), which was a quarter of an export's time.

use std::sync::Arc;

use arrow_array::builder::{
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, Int32Array, Int64Array};
use arrow_array::{RecordBatch, TimestampMicrosecondArray};
use arrow_schema::SchemaRef;
use rusqlite::Row;

use super::batch::{MAX_STEP, STEP_BITS, THINK_PHASES};
use super::export::fingerprint_field;
use super::read::{CREATED_COLUMN, RequestNames, Values, decode_fingerprint};
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

/// The columns of `export::export_schema()`, being built.
#[derive(Default)]
pub struct ExportRows {
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
}

impl ExportRows {
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
        self.session_id.append_option(v.text_ref(1)?);
        self.token_id.append_option(v.int(2)?);
        self.token_text.append_option(v.text_ref(3)?);
        self.think_phase.append_option(
            v.code(4)?
                .and_then(|p| THINK_PHASES.get(p as usize).copied()),
        );
        self.segment_idx.append_option(v.int(5)?);
        let blob = v.blob(6)?.ok_or_else(|| v.wrong(6, "a blob"))?;
        decode_fingerprint(id, blob, &mut self.fingerprint)?;
        self.zone.append_option(
            v.code(7)?
                .and_then(|z| Zone::ALL.get(z as usize).map(|z| z.name())),
        );
        // manifold_confidence, cluster_probability, router_entropy, expert_load_balance,
        // sink_token_mass: columns 8 and 10..=13.
        for (builder, column) in self.reals.iter_mut().zip([8, 10, 11, 12, 13]) {
            builder.append_option(v.real(column)?);
        }
        self.cluster_id.append_option(v.int(9)?);
        self.top_k_positions
            .append_option(v.blob(14)?.map(little_i32));
        self.top_k_scores.append_option(v.blob(15)?.map(little_f32));
        self.capture_layer_ids
            .append_option(v.blob(16)?.map(little_i32));
        self.top_expert_ids
            .append_option(v.blob(17)?.map(little_i32));
        let layout = v.int(18)?.ok_or_else(|| v.wrong(18, "a layout code"))?;
        self.layout
            .push(i32::try_from(layout).map_err(|_| v.wrong(18, "a layout code"))?);
        self.model_id.append_option(v.text_ref(19)?);
        let created = v
            .int(CREATED_COLUMN)?
            .ok_or_else(|| v.wrong(CREATED_COLUMN, "a time"))?;
        self.created_us.push(created);
        self.len += 1;
        Ok(())
    }

    pub fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch> {
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
        ];
        RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| CoreError::Store(format!("building an Arrow batch: {e}")))
    }
}
