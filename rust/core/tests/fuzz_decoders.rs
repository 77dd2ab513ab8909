//! Fuzzing of every decoder of outside bytes: packed rows (files, the sidecar's binary HTTP
//! bodies) and fingerprint blobs read back from a database. A million inputs per decoder by
//! default (`ATTNFAST_FUZZ_CASES` changes it); each must be decoded exactly or refused with an
//! error, never panic, and what decodes must re-encode to the same bytes.

use attnfast_core::Layout;
use attnfast_core::pack::{pack, unpack};
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
                let mut bytes: Vec<u8> =
                    values[..rows].iter().flat_map(|v| v.to_le_bytes()).collect();
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
