//! The SGLang attention explorer's per-step JSON messages, decoded into store batches.
//!
//! One message: `{"request_id": str, "vector": [20 numbers], "step": int, "metadata": {...},
//! "manifold": {...}, "layout": "v1" | "sglang"}`. `step` may also sit in `metadata`; a message
//! without one gets its request's next step (1 for the first, as the server counts). Known
//! metadata keys become columns; `manifold` gives zone, confidence, cluster id and
//! probability; other keys are ignored. Each message is accepted whole or refused with an error
//! naming it and the field at fault; its vector must be one of its layout (`vectors.rs`).
//! Decoding runs here rather than in Python because it is the sidecar's hot path (one message
//! per generated token).
//!
//! Why the JSON is read with hand-written serde visitors instead of into `serde_json::Value`:
//! a `Value` tree costs about eight times the JSON's size (every number a 32-byte enum, every
//! object a map of owned keys), which took the sidecar from 69 MB to 634 MB on a 50 MB body.
//! Here unknown keys are skipped without allocating, numbers land in flat vectors, and each
//! message of a body becomes its compact row while the body is still being read.

use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::batch::{Batch, ListColumn, MAX_STEP, NULL_CODE, THINK_PHASES, TextColumn};
use super::vectors;
use crate::error::{CoreError, Result};
use crate::fingerprint::FINGERPRINT_DIM;
use crate::layout::Layout;
use crate::zone::Zone;

/// Auto-step counters kept at most, per decoder; beyond it they restart (a bound on memory).
const MAX_TRACKED_REQUESTS: usize = 1 << 20;

/// One checked message, before its layout default and steps are applied.
struct Row {
    request_id: String,
    step: Option<i64>,
    vector: [f32; FINGERPRINT_DIM],
    /// `None`: the message named no layout; the decoder's (or the body's) default applies.
    layout: Option<Layout>,
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

// --- compact JSON values --------------------------------------------------------------------

/// A JSON number: integer literals that fit i64 stay integers.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::Int(i) => write!(f, "{i}"),
            Num::Float(x) => write!(
                f,
                "{}",
                serde_json::Number::from_f64(*x).map_or(x.to_string(), |n| n.to_string())
            ),
        }
    }
}

/// A JSON value as the decoder needs it: scalars, flat lists of numbers, and only the kind of
/// anything else (its contents are skipped unread).
#[derive(Debug)]
enum Loose {
    Null,
    Bool(bool),
    Num(Num),
    Str(String),
    Nums(Vec<Num>),
    /// A list holding something that is not a number: where, and what it was.
    List {
        at: usize,
        kind: &'static str,
    },
    Object,
}

impl Loose {
    fn kind(&self) -> &'static str {
        match self {
            Loose::Null => "null",
            Loose::Bool(_) => "a boolean",
            Loose::Num(_) => "a number",
            Loose::Str(_) => "a string",
            Loose::Nums(_) | Loose::List { .. } => "a list",
            Loose::Object => "an object",
        }
    }
}

impl fmt::Display for Loose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loose::Null => write!(f, "null"),
            Loose::Bool(b) => write!(f, "{b}"),
            Loose::Num(n) => write!(f, "{n}"),
            Loose::Str(s) => write!(f, "{}", serde_json::Value::from(s.as_str())),
            other => write!(f, "{}", other.kind()),
        }
    }
}

/// Reads any JSON value as a `Loose`.
struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> std::result::Result<Loose, E> {
        Ok(Loose::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Loose, E> {
        Ok(Loose::Null)
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Loose, E> {
        Ok(Loose::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Loose, E> {
        Ok(Loose::Num(Num::Int(v)))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Loose, E> {
        Ok(Loose::Num(
            i64::try_from(v).map_or(Num::Float(v as f64), Num::Int),
        ))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Loose, E> {
        Ok(Loose::Num(Num::Float(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Loose, E> {
        Ok(Loose::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Loose, E> {
        Ok(Loose::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Loose, A::Error> {
        let mut nums = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(LooseSeed)? {
            match item {
                Loose::Num(n) => nums.push(n),
                other => {
                    let (at, kind) = (nums.len(), other.kind());
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    return Ok(Loose::List { at, kind });
                }
            }
        }
        Ok(Loose::Nums(nums))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Loose, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Loose::Object)
    }
}

struct LooseSeed;

impl<'de> DeserializeSeed<'de> for LooseSeed {
    type Value = Loose;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Loose, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

/// An object's known keys (`names`) as `Loose` values; other keys are skipped. A later
/// duplicate key wins, as in JSON parsers that build maps.
struct Known<'n> {
    names: &'n [&'static str],
}

/// What an object-valued field turned out to be.
enum Object {
    Fields(Vec<(&'static str, Loose)>),
    /// Not an object: its kind (`null` counts as absent).
    Not(Loose),
}

impl Object {
    fn get(&self, name: &str) -> Option<&Loose> {
        match self {
            Object::Fields(f) => f.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| v),
            Object::Not(_) => None,
        }
    }
}

/// A key, matched against the known names without allocating.
struct KeySeed<'n> {
    names: &'n [&'static str],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<&'static str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        struct V<'n>(&'n [&'static str]);
        impl<'de> Visitor<'de> for V<'_> {
            type Value = Option<&'static str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(self.0.iter().find(|n| **n == v).copied())
            }
        }
        d.deserialize_str(V(self.names))
    }
}

impl<'de> DeserializeSeed<'de> for Known<'_> {
    type Value = Object;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Object, D::Error> {
        struct V<'n>(&'n [&'static str]);
        impl<'de> Visitor<'de> for V<'_> {
            type Value = Object;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Object, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key_seed(KeySeed { names: self.0 })? {
                    match key {
                        Some(name) => fields.push((name, map.next_value_seed(LooseSeed)?)),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Object::Fields(fields))
            }
            // Anything else: what it was, for the error message.
            fn visit_unit<E>(self) -> std::result::Result<Object, E> {
                Ok(Object::Not(Loose::Null))
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<Object, E> {
                Ok(Object::Not(Loose::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Object, E> {
                Ok(Object::Not(Loose::Num(Num::Int(v))))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Object, E> {
                Ok(Object::Not(Loose::Num(Num::Float(v as f64))))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Object, E> {
                Ok(Object::Not(Loose::Num(Num::Float(v))))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Object, E> {
                Ok(Object::Not(Loose::Str(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Object, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Object::Not(Loose::List {
                    at: 0,
                    kind: "a list",
                }))
            }
        }
        d.deserialize_any(V(self.names))
    }
}

const MESSAGE_KEYS: [&str; 6] = [
    "request_id",
    "vector",
    "step",
    "layout",
    "metadata",
    "manifold",
];
/// The keys read from `metadata` and `manifold` (one list: both are read with it).
const OBJECT_KEYS: [&str; 18] = [
    "token_id",
    "token_text",
    "think_phase",
    "session_id",
    "model_id",
    "segment_idx",
    "sink_token_mass",
    "top_k_positions",
    "top_k_scores",
    "capture_layer_ids",
    "router_entropy",
    "expert_load_balance",
    "top_expert_ids",
    "step",
    "zone",
    "confidence",
    "cluster_id",
    "cluster_probability",
];

/// One message, read: its top-level fields and its two objects.
struct Message {
    top: Object,
    metadata: Option<Object>,
    manifold: Option<Object>,
}

/// Reads one message (any JSON value; only an object is a message) and checks it.
struct MessageSeed;

impl<'de> DeserializeSeed<'de> for MessageSeed {
    type Value = Result<Row>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Result<Row>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Result<Row>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Result<Row>, A::Error> {
                let mut top = Vec::new();
                let (mut metadata, mut manifold) = (None, None);
                while let Some(key) = map.next_key_seed(KeySeed {
                    names: &MESSAGE_KEYS,
                })? {
                    match key {
                        Some("metadata") => {
                            metadata = Some(map.next_value_seed(Known {
                                names: &OBJECT_KEYS,
                            })?)
                        }
                        Some("manifold") => {
                            manifold = Some(map.next_value_seed(Known {
                                names: &OBJECT_KEYS,
                            })?)
                        }
                        Some(name) => top.push((name, map.next_value_seed(LooseSeed)?)),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(check(Message {
                    top: Object::Fields(top),
                    metadata,
                    manifold,
                }))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Result<Row>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Err(not_object("a list")))
            }
            fn visit_unit<E>(self) -> std::result::Result<Result<Row>, E> {
                Ok(Err(not_object("null")))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Result<Row>, E> {
                Ok(Err(not_object("a boolean")))
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Result<Row>, E> {
                Ok(Err(not_object("a number")))
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Result<Row>, E> {
                Ok(Err(not_object("a number")))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Result<Row>, E> {
                Ok(Err(not_object("a number")))
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<Result<Row>, E> {
                Ok(Err(not_object("a string")))
            }
        }
        d.deserialize_any(V)
    }
}

fn not_object(kind: &str) -> CoreError {
    bad(format!("a message must be a JSON object, got {kind}"))
}

/// A list of messages, each checked as soon as it is read.
struct MessagesSeed;

impl<'de> Visitor<'de> for MessagesSeed {
    type Value = Vec<Result<Row>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(row) = seq.next_element_seed(MessageSeed)? {
            rows.push(row);
        }
        Ok(rows)
    }
}

/// A request body: the list, or `{"fingerprints": [...], "layout": ...}`, or something else.
enum Body {
    Messages(Vec<Result<Row>>, Option<Loose>),
    Not(&'static str),
}

struct BodySeed;

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = Body;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Body, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Body;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a body")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Body, A::Error> {
                Ok(Body::Messages(MessagesSeed.visit_seq(seq)?, None))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Body, A::Error> {
                let (mut rows, mut layout) = (None, None);
                let mut other = None;
                while let Some(key) = map.next_key_seed(KeySeed {
                    names: &["fingerprints", "layout"],
                })? {
                    match key {
                        Some("fingerprints") => match map.next_value_seed(ListOrNot)? {
                            Some(r) => rows = Some(r),
                            None => other = Some("fingerprints is not a list"),
                        },
                        Some(_) => layout = Some(map.next_value_seed(LooseSeed)?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(match (rows, other) {
                    (Some(rows), None) => Body::Messages(rows, layout),
                    _ => Body::Not("an object without a \"fingerprints\" list"),
                })
            }
            fn visit_unit<E>(self) -> std::result::Result<Body, E> {
                Ok(Body::Not("null"))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Body, E> {
                Ok(Body::Not("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Body, E> {
                Ok(Body::Not("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Body, E> {
                Ok(Body::Not("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Body, E> {
                Ok(Body::Not("a number"))
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<Body, E> {
                Ok(Body::Not("a string"))
            }
        }
        d.deserialize_any(V)
    }
}

/// The `fingerprints` value of a body object: the messages, or `None` if not a list.
struct ListOrNot;

impl<'de> DeserializeSeed<'de> for ListOrNot {
    type Value = Option<Vec<Result<Row>>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        match d.deserialize_any(LooseOrMessages)? {
            Either::Messages(rows) => Ok(Some(rows)),
            Either::Other => Ok(None),
        }
    }
}

enum Either {
    Messages(Vec<Result<Row>>),
    Other,
}

struct LooseOrMessages;

impl<'de> Visitor<'de> for LooseOrMessages {
    type Value = Either;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Either, A::Error> {
        Ok(Either::Messages(MessagesSeed.visit_seq(seq)?))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Either, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Either::Other)
    }
    fn visit_unit<E>(self) -> std::result::Result<Either, E> {
        Ok(Either::Other)
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Either, E> {
        Ok(Either::Other)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Either, E> {
        Ok(Either::Other)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Either, E> {
        Ok(Either::Other)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Either, E> {
        Ok(Either::Other)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Either, E> {
        Ok(Either::Other)
    }
}

fn decode_error(e: serde_json::Error, what: &str) -> CoreError {
    CoreError::Decode(format!("{what} is not valid JSON: {e}"))
}

// --- checking a message ----------------------------------------------------------------------

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

fn check(m: Message) -> Result<Row> {
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
    pub errors: Vec<(usize, CoreError)>,
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
                let mut de = serde_json::Deserializer::from_slice(raw);
                MessageSeed
                    .deserialize(&mut de)
                    .and_then(|row| de.end().map(|()| row))
                    .map_err(|e| decode_error(e, "the message"))?
            })
            .collect();
        self.assemble(checked, self.default_layout, all_or_nothing)
    }

    /// Decodes one message, or returns its error (`Decode` if it is not JSON).
    pub fn decode_one(&mut self, raw: &[u8]) -> Result<Decoded> {
        let mut out = self.decode_raw(&[raw], true);
        match out.errors.pop() {
            Some((_, e)) => Err(e),
            None => Ok(out),
        }
    }

    /// Decodes a request body: a JSON list of messages or `{"fingerprints": [...], "layout":
    /// ...}` (the layout applies to messages without their own). All or nothing. A body that
    /// is not JSON is a `Decode` error; one of the wrong shape, `Invalid`.
    pub fn decode_body(&mut self, body: &[u8]) -> Result<Decoded> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed = BodySeed
            .deserialize(&mut de)
            .and_then(|b| de.end().map(|()| b))
            .map_err(|e| decode_error(e, "the body"))?;
        let (checked, layout) = match parsed {
            Body::Messages(rows, layout) => (rows, layout),
            Body::Not(kind) => {
                return Err(bad(format!(
                    "the body must be a list of messages or {{\"fingerprints\": [...]}}, got {kind}"
                )));
            }
        };
        let layout = match layout {
            None | Some(Loose::Null) => self.default_layout,
            Some(Loose::Str(s)) => Layout::from_name(&s)?,
            Some(v) => return Err(bad(format!("layout must be a name, got {v}"))),
        };
        Ok(self.assemble(checked, layout, true))
    }

    fn assemble(
        &mut self,
        checked: Vec<Result<Row>>,
        default_layout: Layout,
        all_or_nothing: bool,
    ) -> Decoded {
        let mut out = Decoded::default();
        if self.next_step.len() > MAX_TRACKED_REQUESTS {
            self.next_step.clear();
        }
        // Steps given to messages without one, applied to the decoder only if kept.
        let mut next: HashMap<String, i64> = HashMap::new();
        let mut rows = Vec::with_capacity(checked.len());
        for (i, row) in checked.into_iter().enumerate() {
            let result = row.and_then(|row| {
                let layout = row.layout.unwrap_or(default_layout);
                if let Some(problem) = vectors::problem(layout, &row.vector) {
                    return Err(bad(format!(
                        "vector is not a {} vector: it {problem}",
                        layout.name()
                    )));
                }
                let step = match row.step {
                    Some(s) => s,
                    None => next
                        .get(&row.request_id)
                        .or_else(|| self.next_step.get(&row.request_id))
                        .copied()
                        .unwrap_or(1),
                };
                if step > MAX_STEP {
                    return Err(bad(format!(
                        "the message has no step, and its request's next one ({step}) is past \
                         the last possible step {MAX_STEP}"
                    )));
                }
                next.insert(row.request_id.clone(), step + 1);
                Ok((row, layout, step))
            });
            match result {
                Ok(row) => rows.push(row),
                Err(e) => out.errors.push((i, e)),
            }
        }
        if all_or_nothing && !out.errors.is_empty() {
            return out;
        }
        self.next_step.extend(next);
        let mut builders: Vec<(Layout, Builder)> = Vec::new();
        for (row, layout, step) in rows {
            let at = match builders.iter().position(|(l, _)| *l == layout) {
                Some(at) => at,
                None => {
                    let mut builder = Builder::default();
                    builder.batch.layout = layout;
                    builders.push((layout, builder));
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
                out.errors[0].1.to_string().contains(expected),
                "{raw}: {:?}",
                out.errors
            );
        }
        let big = format!(
            r#"{{"request_id": "r", "vector": [1e39{}]}}"#,
            ",0".repeat(19)
        );
        let out = d.decode_raw(&[big.as_bytes()], true);
        assert!(
            out.errors[0]
                .1
                .to_string()
                .contains("does not fit a float32")
        );
    }

    /// A v1 fingerprint: masses and histogram each sum to 1.
    fn v1_msg(extra: &str) -> String {
        let mut v = vec!["0"; 20];
        v[0] = "1";
        v[4] = "1";
        format!(
            r#"{{"request_id": "r", "vector": [{}]{extra}}}"#,
            v.join(",")
        )
    }

    #[test]
    fn a_bad_message_is_refused_alone() {
        let mut d = MessageDecoder::new(Layout::V1);
        let good = v1_msg("");
        let not_v1 = msg(r#", "step": 5"#);
        let broken = v1_msg(r#", "metadata": {"token_id": "x"}"#);
        let raw: Vec<&[u8]> = vec![good.as_bytes(), not_v1.as_bytes(), b"{", broken.as_bytes()];
        let out = d.decode_raw(&raw, false);
        assert_eq!(out.batches.iter().map(Batch::rows).sum::<usize>(), 1);
        let errors: Vec<(usize, String)> = out
            .errors
            .iter()
            .map(|(i, e)| (*i, e.to_string()))
            .collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].0 == 1 && errors[0].1.contains("is not a v1 vector: it has masses"));
        assert!(errors[1].0 == 2 && errors[1].1.contains("not valid JSON"));
        assert!(
            errors[2].0 == 3
                && errors[2]
                    .1
                    .contains("token_id must be a 64-bit integer, got \"x\"")
        );
        // The SGLang layout has its own rules: the same vector is one of those.
        let tagged = msg(r#", "layout": "sglang""#);
        assert!(d.decode_raw(&[tagged.as_bytes()], false).errors.is_empty());
    }

    #[test]
    fn steps_past_the_last_are_refused_per_message() {
        let mut d = MessageDecoder::new(Layout::V1);
        let last = v1_msg(&format!(r#", "step": {MAX_STEP}"#));
        let next = v1_msg("");
        let other = v1_msg("").replace(r#""r""#, r#""q""#);
        let raw: Vec<&[u8]> = vec![last.as_bytes(), next.as_bytes(), other.as_bytes()];
        let out = d.decode_raw(&raw, false);
        assert_eq!(out.errors.len(), 1);
        assert!(out.errors[0].0 == 1);
        assert!(
            out.errors[0]
                .1
                .to_string()
                .contains("past the last possible step")
        );
        assert_eq!(out.batches[0].steps, vec![MAX_STEP, 1]);
    }

    #[test]
    fn bodies_are_all_or_nothing_and_name_their_shape() {
        let mut d = MessageDecoder::new(Layout::V1);
        let good = v1_msg("");
        let body = format!("[{good}, {good}]");
        assert_eq!(
            d.decode_body(body.as_bytes()).unwrap().batches[0].steps,
            vec![1, 2]
        );
        let other = msg("").replace(r#""r""#, r#""s""#);
        let body = format!(r#"{{"layout": "sglang", "fingerprints": [{other}]}}"#);
        assert_eq!(
            d.decode_body(body.as_bytes()).unwrap().batches[0].layout,
            Layout::Sglang
        );
        let mixed = format!("[{good}, {}]", msg(""));
        let out = d.decode_body(mixed.as_bytes()).unwrap();
        assert!(out.batches.is_empty() && out.errors[0].0 == 1);
        // The steps of a refused body are not taken.
        let out = d.decode_body(format!("[{good}]").as_bytes()).unwrap();
        assert_eq!(out.batches[0].steps, vec![3]);
        assert!(matches!(d.decode_body(b"[{"), Err(CoreError::Decode(_))));
        for (body, expected) in [
            ("5", "got a number"),
            (r#"{"rows": []}"#, "without a \"fingerprints\" list"),
            (r#"{"fingerprints": 3}"#, "without a \"fingerprints\" list"),
        ] {
            match d.decode_body(body.as_bytes()) {
                Err(CoreError::Invalid(m)) => assert!(m.contains(expected), "{body}: {m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
