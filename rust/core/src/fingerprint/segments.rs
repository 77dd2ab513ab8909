//! Distance segments. The spec's range edges (32, 256) and histogram edges (1, 4, 16, 64, 256,
//! 1024, 4096) together cut distances into nine segments; each value of a fingerprint is a sum
//! of whole segments, and each segment is at most two contiguous key ranges (before and after
//! the query), so a row is summed range by range without looking at single distances.

/// Lower distance edge of each segment; segment `i` is `EDGES[i] <= d < EDGES[i + 1]`.
pub const EDGES: [u64; SEGMENTS] = [0, 1, 4, 16, 32, 64, 256, 1024, 4096];
/// Number of distance segments.
pub const SEGMENTS: usize = 9;
/// Histogram bin (0..8) of each segment.
pub const SEGMENT_BIN: [usize; SEGMENTS] = [0, 1, 2, 3, 3, 4, 5, 6, 7];
/// Range (0 local, 1 mid, 2 long) of each segment.
pub const SEGMENT_RANGE: [usize; SEGMENTS] = [0, 0, 0, 0, 1, 1, 2, 2, 2];

/// Upper distance edge (exclusive) of segment `seg`.
fn upper(seg: usize) -> u64 {
    EDGES.get(seg + 1).copied().unwrap_or(u64::MAX)
}

/// Segment of a distance.
#[inline]
pub fn segment_of(distance: u64) -> usize {
    // EDGES is sorted; the last edge at or below `distance` names the segment.
    EDGES.iter().rposition(|&e| e <= distance).unwrap_or(0)
}

/// A contiguous key range `start..end` whose keys all lie in one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRange {
    pub start: usize,
    pub end: usize,
    pub segment: usize,
}

/// The key ranges of a query at `query` over keys `0..keys`, in key order. They cover `0..keys`
/// exactly once. Requires `query < keys`.
pub fn key_ranges(query: usize, keys: usize) -> Vec<KeyRange> {
    debug_assert!(query < keys);
    let (q, n) = (query as u64, keys as u64);
    let mut ranges = Vec::with_capacity(2 * SEGMENTS);
    // Keys before (and at) the query: k = q - d for lo <= d < hi.
    for seg in (0..SEGMENTS).rev() {
        let (lo, hi) = (EDGES[seg], upper(seg));
        if lo > q {
            continue;
        }
        let start = q.saturating_sub(hi.saturating_sub(1));
        let end = q - lo + 1;
        ranges.push(KeyRange {
            start: start as usize,
            end: end as usize,
            segment: seg,
        });
    }
    // Keys after the query (bidirectional models): k = q + d for max(lo, 1) <= d < hi.
    for (seg, &edge) in EDGES.iter().enumerate() {
        let lo = edge.max(1);
        let hi = upper(seg);
        if lo >= hi {
            continue;
        }
        let start = q.saturating_add(lo).min(n);
        let end = q.saturating_add(hi).min(n);
        if start < end {
            ranges.push(KeyRange {
                start: start as usize,
                end: end as usize,
                segment: seg,
            });
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn segments_of_edges() {
        assert_eq!(segment_of(0), 0);
        assert_eq!(segment_of(1), 1);
        assert_eq!(segment_of(3), 1);
        assert_eq!(segment_of(31), 3);
        assert_eq!(segment_of(32), 4);
        assert_eq!(segment_of(255), 5);
        assert_eq!(segment_of(256), 6);
        assert_eq!(segment_of(4095), 7);
        assert_eq!(segment_of(4096), 8);
        assert_eq!(segment_of(u64::MAX), 8);
    }

    proptest! {
        #[test]
        fn ranges_tile_the_keys(n in 1usize..6000, frac in 0.0f64..1.0) {
            let q = ((n as f64 - 1.0) * frac) as usize;
            let ranges = key_ranges(q, n);
            let mut covered = vec![0u8; n];
            for r in &ranges {
                prop_assert!(r.start < r.end && r.end <= n);
                for (k, c) in covered.iter_mut().enumerate().take(r.end).skip(r.start) {
                    *c += 1;
                    prop_assert_eq!(segment_of(k.abs_diff(q) as u64), r.segment);
                }
            }
            prop_assert!(covered.iter().all(|&c| c == 1));
        }
    }
}
