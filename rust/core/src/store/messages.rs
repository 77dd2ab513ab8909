//! The SGLang attention explorer's per-step JSON messages, decoded into store batches.
//!
//! One message: `{"request_id": str, "vector": [20 numbers], "step": int, "metadata": {...},
//! "manifold": {...}, "layout": "v1" | "sglang"}`. `step` may also sit in `metadata`; a message
//! without one gets its request's next step (1 for the first, as the server counts). Known
//! metadata keys become columns; `manifold` gives zone, confidence, cluster id and
//! probability; other keys are ignored. Each message is accepted whole or refused with an error
//! naming it and the field at fault. Decoding runs here rather than in Python because it is
//! the sidecar's hot path (one message per generated token).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::batch::{Batch, ListColumn, MAX_STEP, NULL_CODE, THINK_PHASES, TextColumn};
use crate::error::{CoreError, Result};
use crate::fingerprint::FINGERPRINT_DIM;
use crate::layout::Layout;
use crate::zone::Zone;

/// Auto-step counters kept at most, per decoder; beyond it they restart (a bound on memory).
const MAX_TRACKED_REQUESTS: usize = 1 << 20;

/// One checked message, before steps are assigned.
struct Row {
    request_id: String,
    step: Option<i64>,
    vector: [f32; FINGERPRINT_DIM],
    layout: Layout,
    fields: Vec<(Field, FieldValue)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Field {
    TokenId,
    TokenText,
    ThinkPhase,
    SessionId,
    ModelId,
    SegmentIdx,
    SinkTokenMass,
    TopKPositions,
    TopKScores,
    CaptureLayerIds,
    RouterEntropy,
    ExpertLoadBalance,
    TopExpertIds,
    Zone,
    Confidence,
    ClusterId,
    ClusterProbability,
}

const METADATA_FIELDS: [(&str, Field); 13] = [
    ("token_id", Field::TokenId),
    ("token_text", Field::TokenText),
    ("think_phase", Field::ThinkPhase),
    ("session_id", Field::SessionId),
    ("model_id", Field::ModelId),
    ("segment_idx", Field::SegmentIdx),
    ("sink_token_mass", Field::SinkTokenMass),
    ("top_k_positions", Field::TopKPositions),
    ("top_k_scores", Field::TopKScores),
    ("capture_layer_ids", Field::CaptureLayerIds),
    ("router_entropy", Field::RouterEntropy),
    ("expert_load_balance", Field::ExpertLoadBalance),
    ("top_expert_ids", Field::TopExpertIds),
];

const MANIFOLD_FIELDS: [(&str, Field); 4] = [
    ("zone", Field::Zone),
    ("confidence", Field::Confidence),
    ("cluster_id", Field::ClusterId),
    ("cluster_probability", Field::ClusterProbability),
];

#[derive(Debug)]
enum FieldValue {
    Int(i64),
    Real(f64),
    Text(String),
    Code(u8),
    Ints(Vec<i32>),
    Floats(Vec<f32>),
}

fn bad(msg: String) -> CoreError {
    CoreError::Invalid(msg)
}

fn as_i64(v: &Value, name: &str) -> Result<i64> {
    v.as_i64()
        .filter(|_| !v.is_boolean())
        .ok_or_else(|| bad(format!("{name} must be a 64-bit integer, got {v}")))
}

fn as_f64(v: &Value, name: &str) -> Result<f64> {
    // serde_json numbers are finite: JSON has no NaN or infinity.
    v.as_f64()
        .ok_or_else(|| bad(format!("{name} must be a number, got {v}")))
}

fn as_f32(v: &Value, name: &str) -> Result<f32> {
    let x = as_f64(v, name)?;
    let y = x as f32;
    if y.is_finite() {
        Ok(y)
    } else {
        Err(bad(format!("{name} = {x} does not fit a float32")))
    }
}

fn as_str<'a>(v: &'a Value, name: &str) -> Result<&'a str> {
    v.as_str()
        .ok_or_else(|| bad(format!("{name} must be a string, got {v}")))
}

fn field_value(field: Field, name: &str, v: &Value) -> Result<FieldValue> {
    Ok(match field {
        Field::TokenId | Field::SegmentIdx | Field::ClusterId => FieldValue::Int(as_i64(v, name)?),
        Field::SinkTokenMass
        | Field::RouterEntropy
        | Field::ExpertLoadBalance
        | Field::Confidence
        | Field::ClusterProbability => FieldValue::Real(as_f64(v, name)?),
        Field::TokenText | Field::SessionId | Field::ModelId => {
            FieldValue::Text(as_str(v, name)?.to_owned())
        }
        Field::ThinkPhase => {
            let s = as_str(v, name)?;
            let code = THINK_PHASES.iter().position(|p| *p == s).ok_or_else(|| {
                bad(format!(
                    "{name} must be one of {}; got {s:?}",
                    THINK_PHASES.join(", ")
                ))
            })?;
            FieldValue::Code(code as u8)
        }
        Field::Zone => {
            let s = as_str(v, name)?;
            let zone = Zone::ALL.iter().find(|z| z.name() == s).ok_or_else(|| {
                let names: Vec<_> = Zone::ALL.iter().map(|z| z.name()).collect();
                bad(format!(
                    "{name} must be one of {}; got {s:?}",
                    names.join(", ")
                ))
            })?;
            FieldValue::Code(*zone as u8)
        }
        Field::TopKScores => {
            let items = v
                .as_array()
                .ok_or_else(|| bad(format!("{name} must be a list of numbers")))?;
            FieldValue::Floats(
                items
                    .iter()
                    .map(|x| as_f32(x, name))
                    .collect::<Result<_>>()?,
            )
        }
        Field::TopKPositions | Field::CaptureLayerIds | Field::TopExpertIds => {
            let items = v
                .as_array()
                .ok_or_else(|| bad(format!("{name} must be a list of integers")))?;
            FieldValue::Ints(
                items
                    .iter()
                    .map(|x| {
                        x.as_i64()
                            .and_then(|i| i32::try_from(i).ok())
                            .ok_or_else(|| {
                                bad(format!("{name} must hold 32-bit integers, got {x}"))
                            })
                    })
                    .collect::<Result<_>>()?,
            )
        }
    })
}

fn object<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Map<String, Value>>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(other) => Err(bad(format!("{key} must be a JSON object, got {other}"))),
    }
}

fn check(message: &Value, default_layout: Layout) -> Result<Row> {
    let m = message.as_object().ok_or_else(|| {
        bad(format!(
            "a message must be a JSON object, got {}",
            kind(message)
        ))
    })?;
    let request_id = match m.get("request_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(bad("request_id must be a non-empty string".into())),
    };
    let vector = match m.get("vector") {
        Some(Value::Array(items)) if items.len() == FINGERPRINT_DIM => {
            let mut out = [0f32; FINGERPRINT_DIM];
            for (i, (dst, x)) in out.iter_mut().zip(items).enumerate() {
                *dst = as_f32(x, &format!("vector[{i}]"))?;
            }
            out
        }
        Some(Value::Array(items)) => {
            return Err(bad(format!(
                "vector must be a list of {FINGERPRINT_DIM} numbers, got {}",
                items.len()
            )));
        }
        other => {
            return Err(bad(format!(
                "vector must be a list of {FINGERPRINT_DIM} numbers, got {}",
                other.map_or("nothing", kind)
            )));
        }
    };
    let metadata = object(m, "metadata")?;
    let manifold = object(m, "manifold")?;
    let step = match m
        .get("step")
        .or_else(|| metadata.and_then(|md| md.get("step")))
    {
        None | Some(Value::Null) => None,
        Some(v) => {
            let step = v.as_i64().filter(|s| (0..=MAX_STEP).contains(s));
            Some(step.filter(|_| !v.is_boolean()).ok_or_else(|| {
                bad(format!(
                    "step must be an integer from 0 to {MAX_STEP}, got {v}"
                ))
            })?)
        }
    };
    let layout = match m.get("layout") {
        None | Some(Value::Null) => default_layout,
        Some(Value::String(s)) => Layout::from_name(s)?,
        Some(v) => match v.as_u64().and_then(|c| u32::try_from(c).ok()) {
            Some(code) => Layout::from_code(code)?,
            None => return Err(bad(format!("layout must be a name or a code, got {v}"))),
        },
    };
    let mut fields = Vec::new();
    for (source, table) in [
        (metadata, &METADATA_FIELDS[..]),
        (manifold, &MANIFOLD_FIELDS[..]),
    ] {
        let Some(source) = source else { continue };
        for &(name, field) in table {
            match source.get(name) {
                None | Some(Value::Null) => {}
                Some(v) => fields.push((field, field_value(field, name, v)?)),
            }
        }
    }
    Ok(Row {
        request_id,
        step,
        vector,
        layout,
        fields,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Columns of one layout's batch, grown message by message. A column appears when its first
/// value does; earlier rows get NULL.
#[derive(Default)]
struct Builder {
    batch: Batch,
    index_of: HashMap<String, u32>,
}

fn fill<T: Clone>(col: &mut Option<Vec<T>>, rows: usize, null: T) -> &mut Vec<T> {
    let v = col.get_or_insert_with(Vec::new);
    v.resize(rows, null);
    v
}

fn fill_text(col: &mut Option<TextColumn>, rows: usize) -> &mut Vec<Option<String>> {
    let c = col.get_or_insert_with(|| TextColumn::Rows(Vec::new()));
    let TextColumn::Rows(v) = c else {
        unreachable!("decoded text columns are per row")
    };
    v.resize(rows, None);
    v
}

fn fill_list<T: Copy>(col: &mut Option<ListColumn<T>>, rows: usize) -> &mut ListColumn<T> {
    let c = col.get_or_insert_with(|| ListColumn {
        offsets: vec![0],
        values: Vec::new(),
    });
    let end = c.values.len();
    c.offsets.resize(rows + 1, end);
    c
}

impl Builder {
    fn push(&mut self, row: Row, step: i64) {
        let b = &mut self.batch;
        let n = b.steps.len();
        let next = self.index_of.len() as u32;
        let index = *self
            .index_of
            .entry(row.request_id.clone())
            .or_insert_with(|| {
                b.request_ids.push(row.request_id);
                next
            });
        b.request_index.push(index);
        b.steps.push(step);
        b.fingerprints.extend_from_slice(&row.vector);
        for (field, value) in row.fields {
            match (field, value) {
                (Field::TokenId, FieldValue::Int(v)) => {
                    fill(&mut b.token_id, n, None).push(Some(v))
                }
                (Field::SegmentIdx, FieldValue::Int(v)) => {
                    fill(&mut b.segment_idx, n, None).push(Some(v))
                }
                (Field::ClusterId, FieldValue::Int(v)) => {
                    fill(&mut b.cluster_id, n, None).push(Some(v))
                }
                (Field::SinkTokenMass, FieldValue::Real(v)) => {
                    fill(&mut b.sink_token_mass, n, f64::NAN).push(v)
                }
                (Field::RouterEntropy, FieldValue::Real(v)) => {
                    fill(&mut b.router_entropy, n, f64::NAN).push(v)
                }
                (Field::ExpertLoadBalance, FieldValue::Real(v)) => {
                    fill(&mut b.expert_load_balance, n, f64::NAN).push(v)
                }
                (Field::Confidence, FieldValue::Real(v)) => {
                    fill(&mut b.manifold_confidence, n, f64::NAN).push(v)
                }
                (Field::ClusterProbability, FieldValue::Real(v)) => {
                    fill(&mut b.cluster_probability, n, f64::NAN).push(v)
                }
                (Field::TokenText, FieldValue::Text(v)) => {
                    fill_text(&mut b.token_text, n).push(Some(v))
                }
                (Field::SessionId, FieldValue::Text(v)) => {
                    fill_text(&mut b.session_id, n).push(Some(v))
                }
                (Field::ModelId, FieldValue::Text(v)) => {
                    fill_text(&mut b.model_id, n).push(Some(v))
                }
                (Field::ThinkPhase, FieldValue::Code(v)) => {
                    fill(&mut b.think_phase, n, NULL_CODE).push(v)
                }
                (Field::Zone, FieldValue::Code(v)) => fill(&mut b.zone, n, NULL_CODE).push(v),
                (Field::TopKScores, FieldValue::Floats(v)) => {
                    let c = fill_list(&mut b.top_k_scores, n);
                    c.values.extend(v);
                    c.offsets.push(c.values.len());
                }
                (field, FieldValue::Ints(v)) => {
                    let col = match field {
                        Field::TopKPositions => &mut b.top_k_positions,
                        Field::CaptureLayerIds => &mut b.capture_layer_ids,
                        _ => &mut b.top_expert_ids,
                    };
                    let c = fill_list(col, n);
                    c.values.extend(v);
                    c.offsets.push(c.values.len());
                }
                (field, value) => unreachable!("{field:?} never decodes to {value:?}"),
            }
        }
    }

    /// Pads every optional column to the row count.
    fn finish(mut self) -> Batch {
        let b = &mut self.batch;
        let n = b.steps.len();
        for col in [&mut b.token_id, &mut b.segment_idx, &mut b.cluster_id] {
            if col.is_some() {
                fill(col, n, None);
            }
        }
        for col in [
            &mut b.sink_token_mass,
            &mut b.router_entropy,
            &mut b.expert_load_balance,
            &mut b.manifold_confidence,
            &mut b.cluster_probability,
        ] {
            if col.is_some() {
                fill(col, n, f64::NAN);
            }
        }
        for col in [&mut b.token_text, &mut b.session_id, &mut b.model_id] {
            if col.is_some() {
                fill_text(col, n);
            }
        }
        for col in [&mut b.think_phase, &mut b.zone] {
            if col.is_some() {
                fill(col, n, NULL_CODE);
            }
        }
        for col in [
            &mut b.top_k_positions,
            &mut b.capture_layer_ids,
            &mut b.top_expert_ids,
        ] {
            if col.is_some() {
                fill_list(col, n);
            }
        }
        if b.top_k_scores.is_some() {
            fill_list(&mut b.top_k_scores, n);
        }
        self.batch
    }
}

/// What decoding produced: one batch per layout, and the refused messages.
#[derive(Debug, Default)]
pub struct Decoded {
    pub batches: Vec<Batch>,
    /// `(index of the message, what was wrong)`.
    pub errors: Vec<(usize, String)>,
}

/// Decodes messages; keeps each request's next step for messages that carry none.
#[derive(Debug)]
pub struct MessageDecoder {
    default_layout: Layout,
    next_step: HashMap<String, i64>,
}

impl MessageDecoder {
    pub fn new(default_layout: Layout) -> Self {
        Self {
            default_layout,
            next_step: HashMap::new(),
        }
    }

    /// Decodes raw JSON messages (one object each). With `all_or_nothing`, any refused message
    /// means no batch at all and no change to the step counters.
    pub fn decode_raw(&mut self, messages: &[&[u8]], all_or_nothing: bool) -> Decoded {
        let checked: Vec<Result<Row>> = messages
            .iter()
            .map(|raw| {
                let value: Value =
                    serde_json::from_slice(raw).map_err(|e| bad(format!("not valid JSON: {e}")))?;
                check(&value, self.default_layout)
            })
            .collect();
        self.assemble(checked, all_or_nothing)
    }

    /// Decodes a request body: a JSON list of messages or `{"fingerprints": [...], "layout":
    /// ...}` (the layout applies to messages without their own). All or nothing.
    pub fn decode_body(&mut self, body: &[u8]) -> Result<Decoded> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| bad(format!("body is not valid JSON: {e}")))?;
        let (items, layout) = match &value {
            Value::Array(items) => (items, self.default_layout),
            Value::Object(m) => match m.get("fingerprints") {
                Some(Value::Array(items)) => {
                    let layout = match m.get("layout") {
                        Some(Value::String(s)) => Layout::from_name(s)?,
                        Some(v) if !v.is_null() => {
                            return Err(bad(format!("layout must be a name, got {v}")));
                        }
                        _ => self.default_layout,
                    };
                    (items, layout)
                }
                _ => {
                    return Err(bad(
                        "body must be a list of messages or {\"fingerprints\": [...]}".into(),
                    ));
                }
            },
            _ => {
                return Err(bad(
                    "body must be a list of messages or {\"fingerprints\": [...]}".into(),
                ));
            }
        };
        let checked = items.iter().map(|v| check(v, layout)).collect();
        Ok(self.assemble(checked, true))
    }

    fn assemble(&mut self, checked: Vec<Result<Row>>, all_or_nothing: bool) -> Decoded {
        let mut out = Decoded::default();
        let mut rows = Vec::with_capacity(checked.len());
        for (i, row) in checked.into_iter().enumerate() {
            match row {
                Ok(row) => rows.push(row),
                Err(e) => out.errors.push((i, e.to_string())),
            }
        }
        if all_or_nothing && !out.errors.is_empty() {
            return out;
        }
        if self.next_step.len() > MAX_TRACKED_REQUESTS {
            self.next_step.clear();
        }
        let mut builders: Vec<(Layout, Builder)> = Vec::new();
        for row in rows {
            let step = match row.step {
                Some(s) => s,
                None => self.next_step.get(&row.request_id).copied().unwrap_or(1),
            };
            // A missing step after the last possible one stays out of range and is refused
            // by the batch check, naming the row.
            self.next_step.insert(row.request_id.clone(), step + 1);
            let at = match builders.iter().position(|(l, _)| *l == row.layout) {
                Some(at) => at,
                None => {
                    let mut builder = Builder::default();
                    builder.batch.layout = row.layout;
                    builders.push((row.layout, builder));
                    builders.len() - 1
                }
            };
            builders[at].1.push(row, step);
        }
        out.batches = builders.into_iter().map(|(_, b)| b.finish()).collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(extra: &str) -> String {
        let vector = vec!["0.05"; 20].join(",");
        format!(r#"{{"request_id": "r", "vector": [{vector}]{extra}}}"#)
    }

    #[test]
    fn decodes_columns_and_fills_steps() {
        let mut d = MessageDecoder::new(Layout::Sglang);
        let a = msg(r#", "metadata": {"token_id": 3, "think_phase": "think"}"#);
        let b = msg(r#", "step": 9, "manifold": {"zone": "unknown", "confidence": 0.5}"#);
        let c = msg("");
        let raw: Vec<&[u8]> = vec![a.as_bytes(), b.as_bytes(), c.as_bytes()];
        let out = d.decode_raw(&raw, false);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let batch = &out.batches[0];
        assert_eq!(batch.layout, Layout::Sglang);
        assert_eq!(batch.steps, vec![1, 9, 10]);
        assert_eq!(batch.token_id, Some(vec![Some(3), None, None]));
        assert_eq!(batch.think_phase, Some(vec![0, NULL_CODE, NULL_CODE]));
        assert_eq!(batch.zone, Some(vec![NULL_CODE, 3, NULL_CODE]));
        let conf = batch.manifold_confidence.as_ref().unwrap();
        assert!(conf[0].is_nan() && conf[1] == 0.5 && conf[2].is_nan());
    }

    #[test]
    fn refuses_with_the_field_named() {
        let mut d = MessageDecoder::new(Layout::V1);
        let cases = [
            ("{", "not valid JSON"),
            ("[1]", "must be a JSON object, got a list"),
            (r#"{"request_id": "", "vector": []}"#, "request_id must be"),
            (r#"{"request_id": "r", "vector": [1]}"#, "20 numbers, got 1"),
            (&msg(r#", "step": -1"#), "step must be an integer"),
            (&msg(r#", "step": true"#), "step must be an integer"),
            (
                &msg(r#", "metadata": {"think_phase": "x"}"#),
                "think_phase must be one of",
            ),
            (
                &msg(r#", "metadata": {"top_k_positions": [1e10]}"#),
                "32-bit",
            ),
            (&msg(r#", "layout": "v9""#), "unknown fingerprint layout"),
        ];
        for (raw, expected) in cases {
            let out = d.decode_raw(&[raw.as_bytes()], true);
            assert!(out.batches.is_empty());
            assert!(
                out.errors[0].1.contains(expected),
                "{raw}: {:?}",
                out.errors
            );
        }
        let big = format!(
            r#"{{"request_id": "r", "vector": [1e39{}]}}"#,
            ",0".repeat(19)
        );
        let out = d.decode_raw(&[big.as_bytes()], true);
        assert!(out.errors[0].1.contains("does not fit a float32"));
    }
}
