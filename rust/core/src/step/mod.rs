//! One captured decode step: the attention rows of each sequence's new query, recomputed from
//! the queries and cached keys (`rows`), and what capture keeps of them (`summary`: the
//! fingerprint, the attention-sink mass and the top-k positions).
//!
//! Why in Rust: a small model takes about a millisecond per decode step, and recomputing the
//! rows layer by layer in torch costs several operator dispatches per layer (matmul, scale,
//! softmax, stack), tens of microseconds each step before any fingerprint is computed. One
//! call per step over every layer costs a few microseconds plus the arithmetic, which is what
//! keeps capture within its 10% overhead budget on small models.

mod rows;
mod scores;
mod softmax;
mod summary;

pub use rows::{LayerQueryKeys, StepRows, query_rows};
pub use summary::{SUMMARY_BASE, step_rows_summary, step_summary};
