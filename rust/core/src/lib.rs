//! attnfast's core: the hot paths behind the Python package, with no Python in them.
//!
//! Performance notes (why the code looks the way it does):
//! - A fingerprint needs, per attention row, its sum, `sum a*ln(a)` (for the entropy) and the
//!   mass in nine distance segments. Distance segments are contiguous key ranges, so one pass
//!   over each range does everything: no normalised copy of the row, no per-key binning.
//! - `ln` is a branch-free polynomial (Cephes `logf`) that LLVM vectorises; `f32::ln` from libm
//!   is a scalar call per element and caps throughput near 0.3 GB/s.
//! - On x86-64 the step kernel is compiled three times (baseline, AVX2+FMA, AVX-512) and picked
//!   at run time, so the wheel runs everywhere and is fast where the CPU allows. AVX-512 was
//!   1.4x AVX2 on the 2-core EPYC we measure on (the ln polynomial is compute-bound).
//! - float16 rows are widened into a row buffer (F16C where the CPU has it, via `half`), then
//!   take the float32 path: one kernel to keep right.
//! - Steps are independent; they run on a rayon pool, and serially in a process forked after the
//!   pool started (its threads do not survive `fork`).
//! - Capture (`step`) recomputes a decode step's rows from queries and keys and fingerprints
//!   them in the same pass: eight keys' scores at a time with `hadd` reductions on AVX2, a
//!   vectorised polynomial `exp`, and the entropy from the shifted scores, so no `ln` per key.

pub mod capture;
pub mod discovery;
pub mod error;
pub mod fingerprint;
pub mod graph;
pub mod layout;
pub mod pack;
pub mod parallel;
pub mod step;
pub mod store;
pub mod zone;

pub use error::{CoreError, Result};
pub use fingerprint::{AttnShape, FINGERPRINT_DIM, FINGERPRINT_FIELDS};
pub use layout::Layout;
pub use zone::Zone;

/// The crate version, shared with the Python package.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
