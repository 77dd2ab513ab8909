//! Property test: whatever rows are appended come back exactly, in id order, with the first of
//! each repeated (request, step) kept and the others counted.

use std::collections::BTreeMap;

use attnfast_core::store::{Batch, Query, Store, StoreOptions, TextColumn};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct RowSpec {
    request: u8,
    step: i64,
    fingerprint: [f32; 20],
    token_id: Option<i64>,
    token_text: Option<String>,
    created_us: i64,
}

/// Random values made a v1 fingerprint (the store refuses others): the masses (0..3) and the
/// histogram (4..12) scaled to sum to 1.
fn v1_vector(mut v: [f32; 20]) -> [f32; 20] {
    for range in [0..3, 4..12] {
        let sum: f64 = v[range.clone()].iter().map(|&x| f64::from(x)).sum();
        for x in &mut v[range] {
            *x = (f64::from(*x) / sum) as f32;
        }
    }
    v
}

fn row() -> impl Strategy<Value = RowSpec> {
    (
        0u8..4,
        0i64..40,
        proptest::array::uniform20(1e-3f32..1e6).prop_map(v1_vector),
        proptest::option::of(any::<i64>()),
        proptest::option::of("[a-zé ]{0,5}"),
        0i64..4_000_000_000_000_000,
    )
        .prop_map(
            |(request, step, fingerprint, token_id, token_text, created_us)| RowSpec {
                request,
                step,
                fingerprint,
                token_id,
                token_text,
                created_us,
            },
        )
}

fn batch(rows: &[RowSpec]) -> Batch {
    // The batch's distinct request ids, in order of first appearance (as the bindings build it).
    let mut b = Batch::default();
    let mut seen: Vec<u8> = Vec::new();
    for r in rows {
        let index = match seen.iter().position(|&q| q == r.request) {
            Some(i) => i,
            None => {
                seen.push(r.request);
                b.request_ids.push(format!("request-{}", r.request));
                seen.len() - 1
            }
        };
        b.request_index.push(index as u32);
        b.steps.push(r.step);
        b.fingerprints.extend_from_slice(&r.fingerprint);
        b.created_us.push(r.created_us);
    }
    b.token_id = Some(rows.iter().map(|r| r.token_id).collect());
    b.token_text = Some(TextColumn::Rows(
        rows.iter().map(|r| r.token_text.clone()).collect(),
    ));
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn appended_rows_read_back_exactly(batches in proptest::collection::vec(proptest::collection::vec(row(), 0..150), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db"), StoreOptions::default()).unwrap();
        let mut expected: BTreeMap<(u8, i64), RowSpec> = BTreeMap::new();
        let mut duplicates = 0;
        for rows in &batches {
            store.append(batch(rows)).unwrap();
            for r in rows {
                if let std::collections::btree_map::Entry::Vacant(e) = expected.entry((r.request, r.step)) {
                    e.insert(r.clone());
                } else {
                    duplicates += 1;
                }
            }
        }
        store.flush().unwrap();
        let got = store.read(&Query::default()).unwrap();
        prop_assert_eq!(got.len(), expected.len());
        prop_assert_eq!(store.writer_stats().duplicates_rejected, duplicates);
        // Requests get keys in order of first appearance; order expected rows the same way.
        let mut first_seen: Vec<u8> = Vec::new();
        for r in batches.iter().flatten() {
            if !first_seen.contains(&r.request) {
                first_seen.push(r.request);
            }
        }
        let ordered: Vec<&RowSpec> = first_seen
            .iter()
            .flat_map(|q| expected.range((*q, i64::MIN)..=(*q, i64::MAX)).map(|(_, r)| r))
            .collect();
        for (i, want) in ordered.iter().enumerate() {
            prop_assert_eq!(&got.request_id[i], &format!("request-{}", want.request));
            prop_assert_eq!(got.step[i], want.step);
            prop_assert_eq!(&got.fingerprint[i * 20..(i + 1) * 20], &want.fingerprint[..]);
            prop_assert_eq!(got.token_id[i], want.token_id);
            prop_assert_eq!(&got.token_text[i], &want.token_text);
            prop_assert_eq!(got.created_us[i], want.created_us);
        }
        store.close().unwrap();
    }
}
