//! The graph codec, the inverted index and serving, against plain reference computations;
//! and a million damaged or random blobs, each decoded exactly or refused, never a panic.

use std::collections::{BTreeSet, HashMap};

use attnfast_core::graph::codec::{FIRST_CHUNK, chunk_bounds};
use attnfast_core::graph::serve::{Selection, normalize_by_target, select};
use attnfast_core::graph::{
    ComponentIndex, Edges, Graph, GraphReader, Mode, Node, ValueType, encode,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("ATTNFAST_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// A random graph: up to 3 layers, nodes in shuffled order, distinct edges.
fn graphs(max_edges: usize) -> impl Strategy<Value = Graph> + Clone {
    (1usize..4, 1usize..400, 0usize..max_edges, any::<u64>()).prop_map(
        move |(n_layers, n_nodes, n_edges, seed)| {
            let mut rng = seed | 1;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let layers: Vec<String> = (0..n_layers).map(|i| format!("h.{i}.mlp.c_fc")).collect();
            let mut set = BTreeSet::new();
            while set.len() < n_nodes {
                set.insert(Node {
                    layer: (next() % n_layers as u64) as u16,
                    position: (next() % 40) as u32,
                    component: (next() % 3000) as u32,
                });
            }
            let mut nodes: Vec<Node> = set.into_iter().collect();
            nodes.reverse();
            let mut pairs = BTreeSet::new();
            let mut edges = Edges::default();
            for _ in 0..n_edges {
                let (s, t) = (
                    (next() % n_nodes as u64) as u32,
                    (next() % n_nodes as u64) as u32,
                );
                if pairs.insert((s, t)) {
                    // Repeated magnitudes too, to test the tie order.
                    let v = ((next() % 2001) as f32 - 1000.0) / 997.0;
                    edges.src.push(s);
                    edges.tgt.push(t);
                    edges.val.push(v);
                }
            }
            Graph {
                layers,
                nodes,
                edges,
            }
        },
    )
}

/// The edges of `g` as (src node, tgt node, val) with real nodes, sorted.
fn as_set(layers: &[String], nodes: &[Node], e: &Edges) -> Vec<(String, Node, Node, u32)> {
    let mut v: Vec<_> = (0..e.len())
        .map(|k| {
            (
                layers[usize::from(nodes[e.src[k] as usize].layer)].clone(),
                nodes[e.src[k] as usize],
                nodes[e.tgt[k] as usize],
                e.val[k].to_bits(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn graphs_round_trip_and_queries_match_a_full_scan() {
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&graphs(6 * FIRST_CHUNK), |g| {
            let blob = encode(&g, ValueType::F32, 3).unwrap();
            let r = GraphReader::open(blob).unwrap();
            prop_assert_eq!(r.n_chunks(), chunk_bounds(r.n_edges() as usize).len());
            let back = r.graph().unwrap();
            prop_assert_eq!(
                as_set(&g.layers, &g.nodes, &g.edges),
                as_set(&back.layers, &back.nodes, &back.edges)
            );
            // Every edge, by falling |val|.
            let all = r.all().unwrap();
            prop_assert!(all.val.windows(2).all(|w| w[0].abs() >= w[1].abs()));
            // top-k is the first k of the full sort.
            for k in [0usize, 1, 7, FIRST_CHUNK + 3, 5 * FIRST_CHUNK + 1] {
                let top = select(
                    &r,
                    &Selection {
                        top_k: Some(k),
                        ..Default::default()
                    },
                )
                .unwrap();
                let n = k.min(all.len());
                let mut want: Vec<u32> = all.val[..n].iter().map(|v| v.abs().to_bits()).collect();
                let mut got: Vec<u32> = top.val.iter().map(|v| v.abs().to_bits()).collect();
                want.sort();
                got.sort();
                prop_assert_eq!(want, got);
            }
            // A threshold keeps exactly the edges at or above it.
            let t = 0.5;
            let above = select(
                &r,
                &Selection {
                    min_abs: t,
                    ..Default::default()
                },
            )
            .unwrap();
            prop_assert_eq!(above.len(), all.val.iter().filter(|v| v.abs() >= t).count());
            // The edges into and out of a node.
            if !back.nodes.is_empty() {
                let node = (back.nodes.len() / 2) as u32;
                let into = r.edges_of(node, true).unwrap();
                let out = r.edges_of(node, false).unwrap();
                prop_assert_eq!(into.len(), all.tgt.iter().filter(|&&t| t == node).count());
                prop_assert_eq!(out.len(), all.src.iter().filter(|&&s| s == node).count());
                prop_assert!(into.tgt.iter().all(|&t| t == node));
                let n = back.nodes[node as usize];
                prop_assert_eq!(
                    r.node_index(&back.layers[usize::from(n.layer)], n.position, n.component),
                    Some(node)
                );
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn float16_values_round_to_float16() {
    let g = Graph {
        layers: vec!["a".into()],
        nodes: vec![
            Node {
                layer: 0,
                position: 0,
                component: 0,
            },
            Node {
                layer: 0,
                position: 1,
                component: 0,
            },
        ],
        edges: Edges {
            src: vec![0, 1],
            tgt: vec![1, 0],
            val: vec![0.123_456_7, -3.5],
        },
    };
    let r = GraphReader::open(encode(&g, ValueType::F16, 3).unwrap()).unwrap();
    let e = r.all().unwrap();
    assert_eq!(e.val[0], -3.5);
    assert_eq!(e.val[1], half::f16::from_f32(0.123_456_7).to_f32());
    let big = Graph {
        edges: Edges {
            src: vec![0],
            tgt: vec![1],
            val: vec![1e6],
        },
        ..g.clone()
    };
    let err = encode(&big, ValueType::F16, 3).unwrap_err().to_string();
    assert!(err.contains("beyond float16"), "{err}");
}

#[test]
fn bad_graphs_are_refused_by_name() {
    let n = |p| Node {
        layer: 0,
        position: p,
        component: 1,
    };
    let base = Graph {
        layers: vec!["a".into()],
        nodes: vec![n(0), n(1)],
        edges: Edges::default(),
    };
    let with = |src: Vec<u32>, tgt: Vec<u32>, val: Vec<f32>| Graph {
        edges: Edges { src, tgt, val },
        ..base.clone()
    };
    let cases = [
        (
            with(vec![0, 0], vec![1, 1], vec![1.0, 2.0]),
            "a:0:1 -> a:1:1 appears twice",
        ),
        (with(vec![0], vec![5], vec![1.0]), "the graph has 2 nodes"),
        (with(vec![0], vec![1], vec![f32::NAN]), "has the value NaN"),
        (
            Graph {
                nodes: vec![n(0), n(0)],
                ..base.clone()
            },
            "node a:0:1 appears twice",
        ),
        (
            Graph {
                layers: vec!["a:b".into()],
                ..base.clone()
            },
            "holds ':'",
        ),
    ];
    for (g, want) in cases {
        let err = encode(&g, ValueType::F32, 3).unwrap_err().to_string();
        assert!(err.contains(want), "{err} should say {want}");
    }
}

#[test]
fn normalisation_divides_by_the_sum_into_each_target() {
    let mut e = Edges {
        src: vec![0, 1, 2, 3],
        tgt: vec![9, 9, 8, 7],
        val: vec![1.0, -3.0, 0.5, 0.0],
    };
    normalize_by_target(&mut e);
    assert_eq!(e.val, vec![0.25, -0.75, 1.0, 0.0]);
}

#[test]
fn index_queries_match_set_operations() {
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let rows = proptest::collection::vec((1i64..300, 0usize..12), 0..2000);
    runner
        .run(
            &(
                rows,
                proptest::collection::vec(0usize..14, 0..4),
                0usize..14,
            ),
            |(rows, keys, not)| {
                let name = |k: usize| format!("h.0.mlp.c_fc:{k}");
                let mut idx = ComponentIndex::new();
                let mut truth: HashMap<String, BTreeSet<u32>> = HashMap::new();
                let names: Vec<String> = rows.iter().map(|&(_, k)| name(k)).collect();
                let prompts: Vec<i64> = rows.iter().map(|&(p, _)| p).collect();
                idx.add(
                    &prompts,
                    &names.iter().map(String::as_str).collect::<Vec<_>>(),
                )
                .unwrap();
                for &(p, k) in &rows {
                    truth.entry(name(k)).or_default().insert(p as u32);
                }
                let include: Vec<String> = keys.iter().map(|&k| name(k)).collect();
                let inc: Vec<&str> = include.iter().map(String::as_str).collect();
                let not = name(not);
                let get = |k: &str| truth.get(k).cloned().unwrap_or_default();
                for mode in [Mode::All, Mode::Any] {
                    let mut want: BTreeSet<u32> = match (mode, inc.is_empty()) {
                        (_, true) => BTreeSet::new(),
                        (Mode::All, false) => inc[1..].iter().fold(get(inc[0]), |a, k| {
                            a.intersection(&get(k)).copied().collect()
                        }),
                        (Mode::Any, false) => inc.iter().flat_map(|k| get(k)).collect(),
                    };
                    for p in get(&not) {
                        want.remove(&p);
                    }
                    let got: BTreeSet<u32> =
                        idx.query(&inc, mode, &[not.as_str()]).iter().collect();
                    prop_assert_eq!(got, want);
                }
                // Persisting and loading gives the same index.
                let mut copy = ComponentIndex::new();
                for (k, b) in idx.take_dirty() {
                    copy.load(&k, &b).unwrap();
                }
                prop_assert_eq!(copy.rows(), idx.rows());
                for k in &inc {
                    prop_assert_eq!(copy.prompts_of(k), idx.prompts_of(k));
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn concatenated_ids_rebuild_the_same_bitmap() {
    let mut a = ComponentIndex::new();
    a.add_concatenated("wte:0", "3,17,40,17").unwrap();
    assert_eq!(
        a.prompts_of("wte:0").iter().collect::<Vec<_>>(),
        vec![3, 17, 40]
    );
    assert_eq!(a.rows(), 3);
    assert!(a.add_concatenated("wte:0", "3,x").is_err());
    assert!(
        a.add(&[0], &["wte:0"])
            .unwrap_err()
            .to_string()
            .contains("outside")
    );
}

/// Valid blobs with bytes flipped, cut or appended, and random bytes.
fn outside_blobs() -> impl Strategy<Value = Vec<u8>> {
    let valid = graphs(40).prop_map(|g| encode(&g, ValueType::F32, 1).unwrap());
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        (valid.clone(), any::<usize>(), 1u8..=255).prop_map(|(mut b, at, x)| {
            let i = at % b.len();
            b[i] ^= x;
            b
        }),
        (valid.clone(), any::<usize>()).prop_map(|(b, at)| b[..at % b.len()].to_vec()),
        (valid, any::<u8>()).prop_map(|(mut b, x)| {
            b.push(x);
            b
        }),
    ]
}

#[test]
fn graph_blobs_decode_exactly_or_fail_cleanly() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&outside_blobs(), |bytes| {
            if let Ok(r) = GraphReader::open(bytes.clone()) {
                if let Ok(g) = r.graph() {
                    // What decodes re-encodes to a blob that decodes to the same graph.
                    let again = GraphReader::open(encode(&g, r.values(), 1).unwrap()).unwrap();
                    prop_assert_eq!(again.graph().unwrap().edges.len(), g.edges.len());
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("graph blobs: {e}"));
}

#[test]
fn seed_pairs_map_local_indices_through_the_trimmed_arrays() {
    let json = br#"[
      {"source": "h.0.attn.k_proj", "target": "h.0.attn.o_proj", "is_cross_seq": true,
       "attribution": [[0, 1, 2, 0, 0.5], [1, 0, 2, 0, -0.25]],
       "trimmed_c_in_idxs": [4, 9], "trimmed_c_out_idxs": [7]},
      {"source": "wte", "target": "h.0.attn.k_proj", "is_cross_seq": false,
       "attribution": [[1, 0, 0, 0.125]], "trimmed_c_in_idxs": [0], "trimmed_c_out_idxs": [4]}
    ]"#;
    let g = attnfast_core::graph::seed::from_pairs_json(json).unwrap();
    assert_eq!(g.layers, vec!["wte", "h.0.attn.k_proj", "h.0.attn.o_proj"]);
    let named: BTreeSet<(String, String, u32)> = (0..g.edges.len())
        .map(|k| {
            let n = |i: u32| attnfast_core::graph::codec::node_name(&g.layers, g.nodes[i as usize]);
            (
                n(g.edges.src[k]),
                n(g.edges.tgt[k]),
                g.edges.val[k].to_bits(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, u32)> = [
        ("h.0.attn.k_proj:0:9", "h.0.attn.o_proj:2:7", 0.5f32),
        ("h.0.attn.k_proj:1:4", "h.0.attn.o_proj:2:7", -0.25),
        ("wte:1:0", "h.0.attn.k_proj:1:4", 0.125),
    ]
    .into_iter()
    .map(|(a, b, v)| (a.to_string(), b.to_string(), v.to_bits()))
    .collect();
    assert_eq!(named, want);
    let bad = br#"[{"source": "a", "target": "b", "attribution": [[0, 3, 0, 1.0]], "trimmed_c_in_idxs": [1], "trimmed_c_out_idxs": [0]}]"#;
    let err = attnfast_core::graph::seed::from_pairs_json(bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pair 0") && err.contains("trimmed_c_in_idxs"),
        "{err}"
    );
}

#[test]
fn a_header_claiming_billions_of_edges_is_refused_without_allocating_them() {
    let g = Graph {
        layers: vec!["a".into()],
        nodes: vec![
            Node {
                layer: 0,
                position: 0,
                component: 0,
            },
            Node {
                layer: 0,
                position: 1,
                component: 0,
            },
        ],
        edges: Edges {
            src: vec![0],
            tgt: vec![1],
            val: vec![1.0],
        },
    };
    let mut blob = encode(&g, ValueType::F32, 3).unwrap();
    let claim: u32 = 3_000_000_000;
    blob[20..28].copy_from_slice(&u64::from(claim).to_le_bytes());
    blob[44..48].copy_from_slice(&claim.to_le_bytes()); // chunk 0's edge count
    let crc = crc32fast::hash(&blob[..64]);
    blob[64..68].copy_from_slice(&crc.to_le_bytes());
    let r = GraphReader::open(blob).unwrap();
    let err = r.all().unwrap_err().to_string();
    assert!(err.contains("bytes for 3000000000 edges"), "{err}");
}
