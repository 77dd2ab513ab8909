//! The seed's `pairs` (seed 001): a JSON list of layer pairs, each with its attribution
//! entries in local component indices that map to real ones through the trimmed index arrays.
//! `[s_in, c_in, s_out, c_out, val]` when `is_cross_seq`, else `[s, c_in, c_out, val]`.

use std::collections::HashMap;

use serde::Deserialize;

use super::codec::{Edges, Graph, Node};
use super::layers;
use crate::{CoreError, Result};

#[derive(Deserialize)]
struct Pair {
    source: String,
    target: String,
    #[serde(default)]
    is_cross_seq: bool,
    attribution: Vec<Vec<f64>>,
    trimmed_c_in_idxs: Vec<u32>,
    trimmed_c_out_idxs: Vec<u32>,
}

fn bad(i: usize, msg: impl std::fmt::Display) -> CoreError {
    CoreError::Decode(format!("seed pairs: pair {i}: {msg}"))
}

fn index(v: f64, what: &str, i: usize) -> Result<u32> {
    if v.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&v) {
        return Err(bad(i, format!("{what} {v} is not a non-negative integer")));
    }
    Ok(v as u32)
}

/// The graph of the seed's pairs JSON (already un-gzipped).
pub fn from_pairs_json(json: &[u8]) -> Result<Graph> {
    let pairs: Vec<Pair> = serde_json::from_slice(json)
        .map_err(|e| CoreError::Decode(format!("seed pairs are not the seed's JSON: {e}")))?;
    let mut names: Vec<String> = Vec::new();
    for p in &pairs {
        for n in [&p.source, &p.target] {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let names = layers::ordered(names);
    let layer_of: HashMap<&str, u16> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u16))
        .collect();
    let mut node_ids: HashMap<Node, u32> = HashMap::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut id = |n: Node| -> u32 {
        *node_ids.entry(n).or_insert_with(|| {
            nodes.push(n);
            (nodes.len() - 1) as u32
        })
    };
    let mut edges = Edges::default();
    for (i, p) in pairs.iter().enumerate() {
        let (src_layer, tgt_layer) = (layer_of[p.source.as_str()], layer_of[p.target.as_str()]);
        let width = if p.is_cross_seq { 5 } else { 4 };
        for e in &p.attribution {
            if e.len() != width {
                return Err(bad(
                    i,
                    format!("an entry has {} numbers, expected {width}", e.len()),
                ));
            }
            let (s_in, c_in, s_out, c_out, val) = if p.is_cross_seq {
                (e[0], e[1], e[2], e[3], e[4])
            } else {
                (e[0], e[1], e[0], e[2], e[3])
            };
            let local_in = index(c_in, "c_in", i)? as usize;
            let local_out = index(c_out, "c_out", i)? as usize;
            let real_in = *p
                .trimmed_c_in_idxs
                .get(local_in)
                .ok_or_else(|| bad(i, format!("c_in {local_in} is beyond trimmed_c_in_idxs")))?;
            let real_out = *p
                .trimmed_c_out_idxs
                .get(local_out)
                .ok_or_else(|| bad(i, format!("c_out {local_out} is beyond trimmed_c_out_idxs")))?;
            let s = id(Node {
                layer: src_layer,
                position: index(s_in, "s_in", i)?,
                component: real_in,
            });
            let t = id(Node {
                layer: tgt_layer,
                position: index(s_out, "s_out", i)?,
                component: real_out,
            });
            if !val.is_finite() {
                return Err(bad(i, format!("value {val}")));
            }
            edges.src.push(s);
            edges.tgt.push(t);
            edges.val.push(val as f32);
        }
    }
    Ok(Graph {
        layers: names,
        nodes,
        edges,
    })
}
