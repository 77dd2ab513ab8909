//! The thread pool. Steps are independent, so work is split by output row.
//!
//! rayon's threads do not survive `fork`: a child that touched a pool inherited from its parent
//! would wait forever. A `pthread_atfork` child handler marks the pool as gone, and the child
//! computes serially (same results, one core). `ATTNFAST_NUM_THREADS` sets the pool size.

use rayon::prelude::*;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Result;

/// Below this many input values a call runs on the calling thread: spreading it costs more
/// than it saves.
const MIN_PARALLEL_WORK: usize = 1 << 17;

static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn after_fork_in_child() {
    FORKED.store(true, Ordering::SeqCst);
}

fn configured_threads() -> usize {
    std::env::var("ATTNFAST_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| {
        let threads = configured_threads();
        if threads <= 1 {
            return None;
        }
        // SAFETY: registers a handler that only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("attnfast-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Threads that a large call uses: 1 in a forked child or where configured so.
pub fn num_threads() -> usize {
    if FORKED.load(Ordering::SeqCst) {
        return 1;
    }
    pool().map_or(1, |p| p.current_num_threads())
}

/// Calls `f(i, row)` for each `width`-sized row of `out`, in parallel when the work (`work_per_row`
/// input values a row) is large enough. Returns the error of the lowest failing row, so error
/// messages do not depend on scheduling.
pub fn try_for_each_row<F>(out: &mut [f32], width: usize, work_per_row: usize, f: F) -> Result<()>
where
    F: Fn(usize, &mut [f32]) -> Result<()> + Sync + Send,
{
    let rows = out.len() / width.max(1);
    let total_work = rows.saturating_mul(work_per_row.max(1));
    let pool = if FORKED.load(Ordering::SeqCst) || rows < 2 || total_work < MIN_PARALLEL_WORK {
        None
    } else {
        pool()
    };
    let Some(pool) = pool else {
        return out
            .chunks_mut(width)
            .enumerate()
            .try_for_each(|(i, row)| f(i, row));
    };
    // At least ~64k values per task so scheduling overhead stays small.
    let min_len = (MIN_PARALLEL_WORK / 2).div_ceil(work_per_row.max(1)).max(1);
    let first_error = pool.install(|| {
        out.par_chunks_mut(width)
            .enumerate()
            .with_min_len(min_len)
            .filter_map(|(i, row)| f(i, row).err().map(|e| (i, e)))
            .min_by_key(|(i, _)| *i)
    });
    first_error.map_or(Ok(()), |(_, e)| Err(e))
}

/// Sorts by key, on the pool when the slice is large (and serially in a forked child).
pub fn sort_unstable_by_key<T, K, F>(v: &mut [T], key: F)
where
    T: Send,
    K: Ord,
    F: Fn(&T) -> K + Sync + Send,
{
    match pool() {
        Some(pool) if !FORKED.load(Ordering::SeqCst) && v.len() >= MIN_PARALLEL_WORK => {
            pool.install(|| v.par_sort_unstable_by_key(key));
        }
        _ => v.sort_unstable_by_key(key),
    }
}

/// `f(i)` for `i` in `0..n`, in order, on the pool when there are several and `work` (input
/// values in all) is large enough (serially in a forked child). The first error by index is
/// returned.
pub fn try_map<R, F>(n: usize, work: usize, f: F) -> Result<Vec<R>>
where
    R: Send,
    F: Fn(usize) -> Result<R> + Sync + Send,
{
    match pool() {
        Some(pool) if !FORKED.load(Ordering::SeqCst) && n > 1 && work >= MIN_PARALLEL_WORK => {
            pool.install(|| (0..n).into_par_iter().map(&f).collect())
        }
        _ => (0..n).map(f).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CoreError;

    #[test]
    fn reports_the_lowest_failing_row() {
        let mut out = vec![0.0f32; 4000];
        let err = try_for_each_row(&mut out, 4, 1 << 12, |i, row| {
            row[0] = i as f32;
            if i % 300 == 7 {
                Err(CoreError::Shape(format!("row {i}")))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "row 7");
    }

    #[test]
    fn every_row_is_visited_once() {
        let mut out = vec![0.0f32; 8000];
        try_for_each_row(&mut out, 8, 1 << 12, |i, row| {
            row.iter_mut().for_each(|v| *v += i as f32 + 1.0);
            Ok(())
        })
        .unwrap();
        for (i, row) in out.chunks(8).enumerate() {
            assert!(row.iter().all(|&v| v == i as f32 + 1.0));
        }
    }
}
