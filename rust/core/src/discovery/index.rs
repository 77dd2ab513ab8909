//! The nearest-neighbour index over a run's sample: a k-d tree with a bounded search.
//!
//! Why not an exact search (kiddo's immutable tree was tried first): fingerprints spread
//! through all 20 dimensions inside a cluster, so an exact k-nearest search there visits
//! hundreds of leaves; measured on planted clusters, 10.8k placements/s on one core, a
//! hundredth of the classifier's goal. The vote only needs neighbours good enough to agree on a
//! cluster, so the search here is best-bin-first with a budget of leaves (`max_leaves`): the
//! leaf the query falls in first, then the leaves whose cells come nearest. With no budget
//! (`usize::MAX`) it is exact; tests hold it to a full scan.
//!
//! Layout: leaves of at most [`LEAF`] points, each stored dimension-major and padded, so the
//! distance loop runs over 32 points at once without reordering any sum (it vectorises); cells
//! split at the median of their widest dimension.

use std::cell::RefCell;

/// Points per leaf.
pub const LEAF: usize = 16;

/// Coordinates that pad a short leaf: their distance to any query is infinite.
const PAD: f32 = f32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    /// Split dimension, or `u32::MAX` for a leaf.
    dim: u32,
    split: f32,
    /// Children (inner node) or the leaf number and its point count (leaf).
    a: u32,
    b: u32,
}

#[derive(Debug)]
pub struct SampleIndex {
    dims: usize,
    nodes: Vec<Node>,
    /// `LEAF * dims` values per leaf, dimension-major.
    leaves: Vec<f32>,
    /// Sample row of each leaf slot (`u32::MAX` for padding).
    rows: Vec<u32>,
}

/// Scratch space of one search, reused across the queries of a thread.
#[derive(Default)]
struct Scratch {
    /// Cells still to visit: (lower bound on squared distance, node).
    queue: Vec<(f32, u32)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl SampleIndex {
    /// Builds the tree over `n` points of `dims` coordinates (row-major in `points`).
    pub fn new(points: &[f32], dims: usize) -> Self {
        assert!(dims > 0 && points.len() % dims == 0);
        let n = points.len() / dims;
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut index = SampleIndex {
            dims,
            nodes: Vec::with_capacity(2 * n / LEAF + 2),
            leaves: Vec::with_capacity((n / LEAF + 2) * LEAF * dims),
            rows: Vec::with_capacity(n + LEAF),
        };
        if n > 0 {
            index.build(points, &mut order, 0, n);
        }
        index
    }

    pub fn len(&self) -> usize {
        self.rows.iter().filter(|&&r| r != u32::MAX).count()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn build(&mut self, points: &[f32], order: &mut [u32], start: usize, end: usize) -> u32 {
        let dims = self.dims;
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            dim: u32::MAX,
            split: 0.0,
            a: 0,
            b: 0,
        });
        let slice = &mut order[start..end];
        let at = |r: u32, d: usize| points[r as usize * dims + d];
        // The widest dimension of the cell.
        let (mut best_dim, mut best_spread) = (0usize, -1f32);
        if slice.len() > LEAF {
            for d in 0..dims {
                let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
                for &r in slice.iter() {
                    let v = at(r, d);
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
                if hi - lo > best_spread {
                    best_spread = hi - lo;
                    best_dim = d;
                }
            }
        }
        if slice.len() <= LEAF || best_spread <= 0.0 && slice.len() <= 4 * LEAF {
            self.push_leaves(points, id, slice);
            return id;
        }
        let mid = slice.len() / 2;
        slice.select_nth_unstable_by(mid, |&p, &q| at(p, best_dim).total_cmp(&at(q, best_dim)));
        let split = at(slice[mid], best_dim);
        let a = self.build(points, order, start, start + mid);
        let b = self.build(points, order, start + mid, end);
        self.nodes[id as usize] = Node {
            dim: best_dim as u32,
            split,
            a,
            b,
        };
        id
    }

    /// Makes node `id` a leaf of `rows` (at most `4 * LEAF` identical points when a cell cannot
    /// be split: they go into consecutive leaves of one node).
    fn push_leaves(&mut self, points: &[f32], id: u32, rows: &[u32]) {
        let dims = self.dims;
        let first = (self.rows.len() / LEAF) as u32;
        for chunk in rows.chunks(LEAF) {
            let base = self.leaves.len();
            self.leaves.resize(base + LEAF * dims, PAD);
            for (slot, &r) in chunk.iter().enumerate() {
                for d in 0..dims {
                    self.leaves[base + d * LEAF + slot] = points[r as usize * dims + d];
                }
            }
            self.rows.extend_from_slice(chunk);
            self.rows
                .extend(std::iter::repeat_n(u32::MAX, LEAF - chunk.len()));
        }
        let count = rows.len().div_ceil(LEAF) as u32;
        self.nodes[id as usize] = Node {
            dim: u32::MAX,
            split: 0.0,
            a: first,
            b: count,
        };
    }

    /// Up to `k` nearest points to `query` found within `max_leaves` leaves, as
    /// `(squared distance, sample row)`, nearest first, into `out`.
    pub fn nearest(&self, query: &[f32], k: usize, max_leaves: usize, out: &mut Vec<(f32, u32)>) {
        out.clear();
        if self.nodes.is_empty() || k == 0 {
            return;
        }
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            self.search(query, k, max_leaves.max(1), out, s);
        });
    }

    fn search(
        &self,
        q: &[f32],
        k: usize,
        max_leaves: usize,
        out: &mut Vec<(f32, u32)>,
        s: &mut Scratch,
    ) {
        let dims = self.dims;
        s.queue.clear();
        s.queue.push((0.0, 0));
        let mut visited = 0usize;
        while let Some(i) = pop_nearest(&mut s.queue) {
            let (bound, mut node) = i;
            if out.len() == k && bound >= out[k - 1].0 {
                break;
            }
            // Down to a leaf, queueing the far side of each split with its bound.
            loop {
                let n = self.nodes[node as usize];
                if n.dim == u32::MAX {
                    break;
                }
                let diff = q[n.dim as usize] - n.split;
                let (near, far) = if diff < 0.0 { (n.a, n.b) } else { (n.b, n.a) };
                let far_bound = bound.max(diff * diff);
                if max_leaves > 1 && (out.len() < k || far_bound < out[k - 1].0) {
                    s.queue.push((far_bound, far));
                }
                node = near;
            }
            let leaf = self.nodes[node as usize];
            for l in leaf.a..leaf.a + leaf.b {
                let block = &self.leaves[l as usize * LEAF * dims..(l as usize + 1) * LEAF * dims];
                let dist = leaf_distances(block, &q[..dims]);
                let rows = &self.rows[l as usize * LEAF..(l as usize + 1) * LEAF];
                for (&d2, &row) in dist.iter().zip(rows) {
                    if (out.len() < k || d2 < out[k - 1].0) && row != u32::MAX {
                        insert(out, k, (d2, row));
                    }
                }
            }
            visited += 1;
            if visited >= max_leaves {
                break;
            }
        }
    }
}

/// Squared distances from `q` to the [`LEAF`] points of a dimension-major block. A fixed-size
/// accumulator so that the compiler keeps it in vector registers (with a slice it unrolled
/// scalar code that stored every partial sum).
#[inline]
fn leaf_distances(block: &[f32], q: &[f32]) -> [f32; LEAF] {
    let mut acc = [0f32; LEAF];
    for (col, &qd) in block.chunks_exact(LEAF).zip(q) {
        let col: &[f32; LEAF] = col.try_into().expect("blocks are LEAF wide");
        for p in 0..LEAF {
            let t = col[p] - qd;
            acc[p] += t * t;
        }
    }
    acc
}

/// Removes and returns the entry with the smallest bound (the queue stays short: a few
/// entries per tree level, so a linear scan beats a heap).
fn pop_nearest(queue: &mut Vec<(f32, u32)>) -> Option<(f32, u32)> {
    let (i, _) = queue
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.0.total_cmp(&b.1.0))?;
    Some(queue.swap_remove(i))
}

/// Inserts into a list kept sorted by distance and at most `k` long; ties keep the earlier.
fn insert(out: &mut Vec<(f32, u32)>, k: usize, item: (f32, u32)) {
    let pos = out.partition_point(|e| e.0 <= item.0);
    if pos >= k {
        return;
    }
    if out.len() == k {
        out.pop();
    }
    out.insert(pos, item);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream (xorshift), enough for test points.
    fn stream(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    fn scan(points: &[f32], dims: usize, q: &[f32], k: usize) -> Vec<f32> {
        let mut d: Vec<f32> = points
            .chunks_exact(dims)
            .map(|p| p.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum())
            .collect();
        d.sort_by(f32::total_cmp);
        d.truncate(k);
        d
    }

    #[test]
    fn an_unbounded_search_is_exact() {
        let mut next = stream(7);
        for (dims, n) in [
            (1usize, 10usize),
            (2, 3000),
            (5, 3000),
            (20, 2000),
            (20, 33),
        ] {
            // Rounded coordinates, so that many points tie on some axes.
            let points: Vec<f32> = (0..n * dims).map(|_| (next() * 50.0).round()).collect();
            let index = SampleIndex::new(&points, dims);
            assert_eq!(index.len(), n);
            let mut got = Vec::new();
            for _ in 0..100 {
                let q: Vec<f32> = (0..dims).map(|_| next() * 50.0).collect();
                index.nearest(&q, 7, usize::MAX, &mut got);
                let want = scan(&points, dims, &q, 7);
                let got_d: Vec<f32> = got.iter().map(|n| n.0).collect();
                assert_eq!(got_d.len(), want.len());
                for (g, w) in got_d.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * w.max(1.0),
                        "{dims}: {got_d:?} vs {want:?}"
                    );
                }
                for &(d2, row) in &got {
                    let p = &points[row as usize * dims..(row as usize + 1) * dims];
                    let d: f32 = p.iter().zip(&q).map(|(a, b)| (a - b) * (a - b)).sum();
                    assert!((d - d2).abs() <= 1e-3 * d.max(1.0));
                }
            }
        }
    }

    #[test]
    fn a_point_of_the_sample_finds_itself_within_one_leaf() {
        let mut next = stream(3);
        let dims = 20;
        let points: Vec<f32> = (0..5000 * dims).map(|_| next()).collect();
        let index = SampleIndex::new(&points, dims);
        let mut got = Vec::new();
        for r in (0..5000).step_by(37) {
            index.nearest(&points[r * dims..(r + 1) * dims], 3, 1, &mut got);
            assert_eq!(got[0], (0.0, r as u32));
        }
    }

    #[test]
    fn identical_points_do_not_break_the_build() {
        let points = vec![1.0f32; 500 * 3];
        let index = SampleIndex::new(&points, 3);
        let mut got = Vec::new();
        index.nearest(&[1.0, 1.0, 1.0], 5, usize::MAX, &mut got);
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|n| n.0 == 0.0));
    }
}
