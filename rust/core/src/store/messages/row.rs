//! A message, read, checked into a row (every field named when it is wrong), and rows
//! gathered into a batch's columns.

use std::collections::HashMap;

use super::json::{Loose, Message, Num, Object};
use crate::error::{CoreError, Result};
use crate::fingerprint::FINGERPRINT_DIM;
use crate::layout::Layout;
use crate::store::batch::{
    Batch, ListColumn, MAX_STEP, NULL_CODE, THINK_PHASES, TextColumn, list_lengths,
};
use crate::zone::Zone;

/// One checked message, before its layout default and steps are applied.
pub(super) struct Row {
    pub(super) request_id: String,
    pub(super) step: Option<i64>,
    pub(super) vector: [f32; FINGERPRINT_DIM],
    /// `None`: the message named no layout; the decoder's (or the body's) default applies.
    pub(super) layout: Option<Layout>,
    fields: Vec<(Field, FieldValue)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Field {
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
pub(super) enum FieldValue {
    Int(i64),
    Real(f64),
    Text(String),
    Code(u8),
    Ints(Vec<i32>),
    Floats(Vec<f32>),
}

pub(super) fn bad(msg: String) -> CoreError {
    CoreError::Invalid(msg)
}

fn as_i64(v: &Loose, name: &str) -> Result<i64> {
    match v {
        Loose::Num(Num::Int(i)) => Ok(*i),
        _ => Err(bad(format!("{name} must be a 64-bit integer, got {v}"))),
    }
}

fn as_f64(v: &Loose, name: &str) -> Result<f64> {
    // JSON numbers are finite: JSON has no NaN or infinity.
    match v {
        Loose::Num(n) => Ok(n.as_f64()),
        _ => Err(bad(format!("{name} must be a number, got {v}"))),
    }
}

fn to_f32(x: f64, name: &str) -> Result<f32> {
    let y = x as f32;
    if y.is_finite() {
        Ok(y)
    } else {
        Err(bad(format!("{name} = {x} does not fit a float32")))
    }
}

fn as_str<'a>(v: &'a Loose, name: &str) -> Result<&'a str> {
    match v {
        Loose::Str(s) => Ok(s),
        _ => Err(bad(format!("{name} must be a string, got {v}"))),
    }
}

fn numbers<'a>(v: &'a Loose, name: &str, what: &str) -> Result<&'a [Num]> {
    match v {
        Loose::Nums(n) => Ok(n),
        Loose::List { at, kind } => Err(bad(format!("{name}[{at}] must be a number, got {kind}"))),
        _ => Err(bad(format!("{name} must be a list of {what}"))),
    }
}

fn field_value(field: Field, name: &str, v: &Loose) -> Result<FieldValue> {
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
        Field::TopKScores => FieldValue::Floats(
            numbers(v, name, "numbers")?
                .iter()
                .map(|x| to_f32(x.as_f64(), name))
                .collect::<Result<_>>()?,
        ),
        Field::TopKPositions | Field::CaptureLayerIds | Field::TopExpertIds => FieldValue::Ints(
            numbers(v, name, "integers")?
                .iter()
                .map(|x| {
                    match x {
                        Num::Int(i) => i32::try_from(*i).ok(),
                        Num::Float(_) => None,
                    }
                    .ok_or_else(|| bad(format!("{name} must hold 32-bit integers, got {x}")))
                })
                .collect::<Result<_>>()?,
        ),
    })
}

fn object_fields<'a>(o: Option<&'a Object>, key: &str) -> Result<Option<&'a Object>> {
    match o {
        None | Some(Object::Not(Loose::Null)) => Ok(None),
        Some(Object::Not(other)) => Err(bad(format!(
            "{key} must be a JSON object, got {}",
            other.kind()
        ))),
        Some(fields) => Ok(Some(fields)),
    }
}

/// The batch's list rules, per message: a message that breaks them is refused alone rather
/// than failing the batch it was decoded into.
fn check_lists(fields: &[(Field, FieldValue)]) -> Result<()> {
    let len = |wanted: Field| {
        fields.iter().find_map(|(f, v)| match v {
            FieldValue::Ints(x) if *f == wanted => Some(x.len()),
            FieldValue::Floats(x) if *f == wanted => Some(x.len()),
            _ => None,
        })
    };
    let of = |f| len(f).unwrap_or(0);
    list_lengths(
        String::new,
        of(Field::TopKPositions),
        of(Field::TopKScores),
        of(Field::TopExpertIds),
    )
}

pub(super) fn check(m: Message) -> Result<Row> {
    let request_id = match m.top.get("request_id") {
        Some(Loose::Str(s)) if !s.is_empty() => s.clone(),
        _ => return Err(bad("request_id must be a non-empty string".into())),
    };
    let vector = match m.top.get("vector") {
        Some(Loose::Nums(items)) if items.len() == FINGERPRINT_DIM => {
            let mut out = [0f32; FINGERPRINT_DIM];
            for (i, (dst, x)) in out.iter_mut().zip(items).enumerate() {
                *dst = to_f32(x.as_f64(), &format!("vector[{i}]"))?;
            }
            out
        }
        Some(Loose::Nums(items)) => {
            return Err(bad(format!(
                "vector must be a list of {FINGERPRINT_DIM} numbers, got {}",
                items.len()
            )));
        }
        Some(Loose::List { at, kind }) => {
            return Err(bad(format!("vector[{at}] must be a number, got {kind}")));
        }
        other => {
            return Err(bad(format!(
                "vector must be a list of {FINGERPRINT_DIM} numbers, got {}",
                other.map_or("nothing", Loose::kind)
            )));
        }
    };
    let metadata = object_fields(m.metadata.as_ref(), "metadata")?;
    let manifold = object_fields(m.manifold.as_ref(), "manifold")?;
    let step = match m
        .top
        .get("step")
        .or_else(|| metadata.and_then(|md| md.get("step")))
    {
        None | Some(Loose::Null) => None,
        Some(v) => match v {
            Loose::Num(Num::Int(s)) if (0..=MAX_STEP).contains(s) => Some(*s),
            _ => {
                return Err(bad(format!(
                    "step must be an integer from 0 to {MAX_STEP}, got {v}"
                )));
            }
        },
    };
    let layout = match m.top.get("layout") {
        None | Some(Loose::Null) => None,
        Some(Loose::Str(s)) => Some(Layout::from_name(s)?),
        Some(v) => match v {
            Loose::Num(Num::Int(c)) if u32::try_from(*c).is_ok() => {
                Some(Layout::from_code(*c as u32)?)
            }
            _ => return Err(bad(format!("layout must be a name or a code, got {v}"))),
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
                None | Some(Loose::Null) => {}
                Some(v) => fields.push((field, field_value(field, name, v)?)),
            }
        }
    }
    check_lists(&fields)?;
    Ok(Row {
        request_id,
        step,
        vector,
        layout,
        fields,
    })
}

/// Columns of one layout's batch, grown message by message. A column appears when its first
/// value does; earlier rows get NULL.
#[derive(Default)]
pub(super) struct Builder {
    pub(super) batch: Batch,
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
    pub(super) fn push(&mut self, row: Row, step: i64) {
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
    pub(super) fn finish(mut self) -> Batch {
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
