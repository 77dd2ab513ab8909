//! Serving a graph the seed's way: drop edges whose ends are filtered out, keep the top-k by
//! |val|, then normalise by target (each value over the sum of |val| into its target among the
//! kept edges, sign kept; a target whose sum is 0 keeps its values).

use super::codec::{Edges, GraphReader};
use crate::{CoreError, Result};

/// What to serve: `top_k` edges (all when `None`) with |val| of at least `min_abs`, only between
/// nodes whose `keep` entry is true (all when `None`), normalised or not.
#[derive(Debug, Clone, Default)]
pub struct Selection<'a> {
    pub top_k: Option<usize>,
    pub min_abs: f32,
    pub keep: Option<&'a [bool]>,
    pub normalize: bool,
}

/// The selected edges, by falling |val| (before normalisation). Reads chunks in order and stops
/// once the next chunk cannot hold an edge that would be kept.
pub fn select(reader: &GraphReader, sel: &Selection<'_>) -> Result<Edges> {
    if let Some(keep) = sel.keep
        && keep.len() != reader.nodes().len()
    {
        return Err(CoreError::Shape(format!(
            "the node filter has {} entries for {} nodes",
            keep.len(),
            reader.nodes().len()
        )));
    }
    let k = sel.top_k.unwrap_or(usize::MAX);
    let mut out = Edges::default();
    if k == 0 {
        return Ok(out);
    }
    // Chunks are bands of |val|: every edge of a later chunk is at most any of an earlier one.
    // So the chunks that can hold kept edges are a prefix: up to the first whose edges before
    // it already reach k (counted without the node filter, an upper bound), and not past the
    // threshold.
    let mut needed = 0;
    let mut total = 0usize;
    while needed < reader.n_chunks() && total < k && reader.chunk_max_abs(needed) >= sel.min_abs {
        total += reader.chunk_len(needed);
        needed += 1;
    }
    for c in reader.sorted_chunks(needed)? {
        for j in 0..c.len() {
            let (s, t, v) = (c.src[j], c.tgt[j], c.val[j]);
            if v.abs() < sel.min_abs {
                break;
            }
            if let Some(keep) = sel.keep
                && !(keep[s as usize] && keep[t as usize])
            {
                continue;
            }
            out.src.push(s);
            out.tgt.push(t);
            out.val.push(v);
        }
        if out.len() >= k {
            break;
        }
    }
    out.truncate(k);
    if let Some(keep) = sel.keep
        && out.len() < k
        && needed < reader.n_chunks()
    {
        // The node filter dropped edges: read on, chunk by chunk, until k are kept.
        for i in needed..reader.n_chunks() {
            if out.len() >= k || reader.chunk_max_abs(i) < sel.min_abs {
                break;
            }
            let mut c = reader.chunk(i)?;
            c.sort_by_magnitude();
            for j in 0..c.len() {
                let (s, t, v) = (c.src[j], c.tgt[j], c.val[j]);
                if v.abs() < sel.min_abs || out.len() >= k {
                    break;
                }
                if keep[s as usize] && keep[t as usize] {
                    out.src.push(s);
                    out.tgt.push(t);
                    out.val.push(v);
                }
            }
        }
    }
    if sel.normalize {
        normalize_by_target(&mut out);
    }
    Ok(out)
}

/// The seed's edge normalisation, in place.
pub fn normalize_by_target(edges: &mut Edges) {
    let mut sums: std::collections::HashMap<u32, f64> = std::collections::HashMap::new();
    for (&t, &v) in edges.tgt.iter().zip(&edges.val) {
        *sums.entry(t).or_default() += f64::from(v.abs());
    }
    for (t, v) in edges.tgt.iter().zip(edges.val.iter_mut()) {
        let s = sums[t];
        if s > 0.0 {
            *v = (f64::from(*v) / s) as f32;
        }
    }
}
