//! Fuzzing of every decoder of outside bytes: packed rows (files, the sidecar's binary HTTP
//! bodies), fingerprint blobs read back from a database, and the JSON messages of ZMQ, HTTP
//! and JSONL files. A million inputs per decoder by
//! default (`ATTNFAST_FUZZ_CASES` changes it); each must be decoded exactly or refused with an
//! error, never panic, and what decodes must re-encode to the same bytes.

use attnfast_core::Layout;
use attnfast_core::pack::{pack, unpack};
use attnfast_core::store::messages::MessageDecoder;
use attnfast_core::store::read::decode_fingerprint;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("ATTNFAST_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Bytes that are sometimes whole rows of finite floats, sometimes not: random lengths around
/// row boundaries, random bit patterns (NaN and infinity included), and valid rows with one
/// byte flipped.
fn outside_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        (0usize..5).prop_flat_map(|rows| proptest::collection::vec(any::<u8>(), rows * 80)),
        (
            proptest::collection::vec(-1e6f32..1e6, 0..100),
            any::<usize>(),
            any::<u8>()
        )
            .prop_map(|(values, at, flip)| {
                let rows = values.len() / 20 * 20;
                let mut bytes: Vec<u8> = values[..rows]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] ^= flip;
                }
                bytes
            }),
    ]
}

fn run(name: &str, test: impl Fn(Vec<u8>) -> Result<(), TestCaseError>) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&outside_bytes(), test)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

#[test]
fn packed_rows_decode_exactly_or_fail_cleanly() {
    run("unpack", |bytes| {
        let whole = bytes.len() % 80 == 0;
        let finite = bytes
            .chunks_exact(4)
            .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
        for layout in Layout::ALL {
            match unpack(&bytes, layout) {
                Ok(values) => {
                    prop_assert!(whole && finite);
                    prop_assert_eq!(pack(&values, layout).unwrap(), bytes.clone());
                }
                Err(e) => {
                    prop_assert!(!(whole && finite), "refused good bytes: {}", e);
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
        Ok(())
    });
}

#[test]
fn stored_blobs_decode_exactly_or_fail_cleanly() {
    run("decode_fingerprint", |bytes| {
        let mut out = Vec::new();
        match decode_fingerprint(7, &bytes, &mut out) {
            Ok(()) => {
                prop_assert_eq!(bytes.len(), 80);
                let again: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
                prop_assert_eq!(again, bytes);
            }
            Err(e) => {
                prop_assert!(bytes.len() != 80);
                prop_assert!(e.to_string().contains("row id 7"));
            }
        }
        Ok(())
    });
}

/// Vectors that are v1 fingerprints (masses and histogram summing to 1), and others.
fn vectors() -> impl Strategy<Value = Vec<f64>> + Clone {
    prop_oneof![
        proptest::collection::vec(-1e6f64..1e6, 18..22),
        proptest::collection::vec(0.0f64..1.0, 20).prop_map(|mut v| {
            for range in [0..3, 4..12] {
                let s: f64 = v[range.clone()].iter().sum::<f64>().max(1e-9);
                v[range].iter_mut().for_each(|x| *x /= s);
            }
            v
        }),
    ]
}

/// JSON messages: valid ones with one byte flipped or cut short, and random bytes.
fn outside_messages() -> impl Strategy<Value = Vec<u8>> {
    let valid = (
        "[a-z0-9]{0,6}",
        vectors(),
        proptest::option::of(-3i64..100),
        proptest::option::of(prop_oneof![Just("think"), Just("output"), Just("nope")]),
        proptest::option::of(proptest::collection::vec(-5i64..5_000_000_000, 0..4)),
    )
        .prop_map(|(id, vector, step, phase, topk)| {
            let mut metadata = serde_json::Map::new();
            if let Some(p) = phase {
                metadata.insert("think_phase".into(), p.into());
            }
            if let Some(t) = topk {
                metadata.insert("top_k_positions".into(), t.into());
            }
            let mut m =
                serde_json::json!({"request_id": id, "vector": vector, "metadata": metadata});
            if let Some(s) = step {
                m["step"] = s.into();
            }
            serde_json::to_vec(&m).unwrap()
        });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        valid.clone(),
        (valid.clone(), any::<usize>(), any::<u8>()).prop_map(|(mut bytes, at, flip)| {
            let i = at % bytes.len();
            bytes[i] ^= flip;
            bytes
        }),
        (valid, any::<usize>()).prop_map(|(bytes, at)| bytes[..at % bytes.len()].to_vec()),
    ]
}

#[test]
fn json_messages_decode_exactly_or_fail_cleanly() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let decoder = std::cell::RefCell::new(MessageDecoder::new(Layout::V1));
    runner
        .run(&outside_messages(), |bytes| {
            let out = decoder.borrow_mut().decode_raw(&[&bytes], false);
            let rows: usize = out.batches.iter().map(|b| b.rows()).sum();
            prop_assert_eq!(rows + out.errors.len(), 1);
            if rows == 1 {
                // What was accepted is what the JSON said.
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let batch = &out.batches[0];
                prop_assert_eq!(&batch.request_ids[0], v["request_id"].as_str().unwrap());
                for (i, x) in v["vector"].as_array().unwrap().iter().enumerate() {
                    prop_assert_eq!(batch.fingerprints[i], x.as_f64().unwrap() as f32);
                }
            } else {
                prop_assert!(!out.errors[0].1.to_string().is_empty());
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("decode_raw: {e}"));
}

/// Capture files: one written for real (metadata, steps and prompt rows in small chunks, the
/// index), then cut, flipped, or replaced by random bytes. Opening and reading every record
/// must give the record or a capture error naming the file, never panic.
#[test]
fn capture_files_read_or_fail_cleanly() {
    use attnfast_core::CoreError;
    use attnfast_core::capture::{CaptureReader, CaptureWriter, Record, StepHeader, WriterOptions};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.attn");
    let opts = WriterOptions {
        chunk_bytes: 300,
        level: 1,
    };
    let mut w = CaptureWriter::create(&path, r#"{"model": "m", "mode": "full"}"#, opts).unwrap();
    for (kind, count) in [(Record::Prompt, 3u32), (Record::Step, 6)] {
        for s in 0..count {
            let h = StepHeader {
                sequence: 0,
                step: s,
                token_id: 1,
                position: s + 1,
                timestamp_ms: 0,
                layers: 1,
                heads: 2,
                context_len: s + 1,
                text: "t".into(),
            };
            let v: Vec<f32> = (0..h.values()).map(|i| i as f32 / 10.0).collect();
            w.write_f32(kind, &h, &v).unwrap();
        }
    }
    w.close().unwrap();
    let valid = std::fs::read(&path).unwrap();
    let mutated = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|tail| {
            let mut b = b"ATTNCAP\0\x01\0\0\0\0\0\0\0".to_vec();
            b.extend(tail);
            b
        }),
        (any::<usize>(), any::<u8>(), any::<usize>(), any::<u8>()).prop_map({
            let valid = valid.clone();
            move |(a, x, b, y)| {
                let mut bytes = valid.clone();
                let n = bytes.len();
                bytes[a % n] ^= x;
                bytes[b % n] ^= y;
                bytes
            }
        }),
        any::<usize>().prop_map({
            let valid = valid.clone();
            move |cut| valid[..cut % valid.len()].to_vec()
        }),
    ];
    let mut runner = TestRunner::new(Config {
        // Each case writes and opens a file: a fifth of the in-memory decoders' count.
        cases: (cases() / 5).max(1),
        failure_persistence: None,
        ..Config::default()
    });
    let shown = path.display().to_string();
    runner
        .run(&mutated, |bytes| {
            std::fs::write(&path, &bytes).unwrap();
            match CaptureReader::open(&path) {
                Ok(mut r) => {
                    let mut out = Vec::new();
                    for kind in [Record::Step, Record::Prompt] {
                        for i in 0..r.count(kind) {
                            let n = r.record_header(kind, i).unwrap().values();
                            match r.read_record(kind, i, &mut out) {
                                Ok(()) => prop_assert_eq!(out.len(), n),
                                Err(e) => {
                                    prop_assert!(matches!(e, CoreError::Capture(_)), "{e:?}");
                                    prop_assert!(e.to_string().contains(&shown), "{e}");
                                }
                            }
                        }
                    }
                    let _ = r.verify();
                }
                Err(e) => {
                    prop_assert!(matches!(e, CoreError::Capture(_)), "{e:?}");
                    prop_assert!(e.to_string().contains(&shown), "{e}");
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("capture reader: {e}"));
}
