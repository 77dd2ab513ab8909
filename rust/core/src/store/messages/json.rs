//! The JSON of messages and bodies, read with hand-written serde visitors into compact values
//! (see the module above for why not `serde_json::Value`).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::row::{Row, bad, check};
use crate::error::{CoreError, Result};

/// A JSON number: integer literals that fit i64 stay integers.
#[derive(Debug, Clone, Copy)]
pub(super) enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    pub(super) fn as_f64(self) -> f64 {
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
pub(super) enum Loose {
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
    pub(super) fn kind(&self) -> &'static str {
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
pub(super) enum Object {
    Fields(Vec<(&'static str, Loose)>),
    /// Not an object: its kind (`null` counts as absent).
    Not(Loose),
}

impl Object {
    pub(super) fn get(&self, name: &str) -> Option<&Loose> {
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
pub(super) struct Message {
    pub(super) top: Object,
    pub(super) metadata: Option<Object>,
    pub(super) manifold: Option<Object>,
}

/// Reads one message (any JSON value; only an object is a message) and checks it.
pub(super) struct MessageSeed;

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
pub(super) enum Body {
    Messages(Vec<Result<Row>>, Option<Loose>),
    Not(&'static str),
}

pub(super) struct BodySeed;

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

pub(super) fn decode_error(e: serde_json::Error, what: &str) -> CoreError {
    CoreError::Decode(format!("{what} is not valid JSON: {e}"))
}
