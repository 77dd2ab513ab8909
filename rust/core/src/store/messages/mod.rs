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

mod json;
mod row;

use std::collections::HashMap;

use serde::de::DeserializeSeed;

use super::batch::{Batch, MAX_STEP};
use super::vectors;
use crate::error::{CoreError, Result};
use crate::layout::Layout;
use json::{Body, BodySeed, Loose, MessageSeed, decode_error};
use row::{Builder, Row, bad};

/// Auto-step counters kept at most, per decoder; beyond it they restart (a bound on memory).
const MAX_TRACKED_REQUESTS: usize = 1 << 20;

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
    use crate::store::batch::NULL_CODE;

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
    fn list_rules_refuse_one_message_not_its_batch() {
        let mut d = MessageDecoder::new(Layout::V1);
        let unpaired =
            v1_msg(r#", "metadata": {"top_k_positions": [1, 2], "top_k_scores": [0.5]}"#);
        let experts: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
        let too_many = v1_msg(&format!(
            r#", "metadata": {{"top_expert_ids": [{}]}}"#,
            experts.join(",")
        ));
        let good = v1_msg("");
        let raw: Vec<&[u8]> = vec![
            good.as_bytes(),
            unpaired.as_bytes(),
            too_many.as_bytes(),
            good.as_bytes(),
        ];
        let out = d.decode_raw(&raw, false);
        assert_eq!(out.batches.iter().map(Batch::rows).sum::<usize>(), 2);
        let errors: Vec<(usize, String)> = out
            .errors
            .iter()
            .map(|(i, e)| (*i, e.to_string()))
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].0 == 1 && errors[0].1.contains("top_k_scores has 1"));
        assert!(errors[1].0 == 2 && errors[1].1.contains("top_expert_ids has 5000 entries"));
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
