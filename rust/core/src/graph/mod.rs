//! Attribution graphs: the edge codec, the inverted index of components over prompts, the seed's
//! gzip-JSON pairs, and the queries that serve a graph (top-k, threshold, a node's edges,
//! normalisation by target). Storage (SQLite) stays in Python, which owns the database file: one
//! SQLite library per file per process (two copies in one process break each other's locks).
//!
//! Performance notes:
//! - Edges are stored in bands of falling |val| (4,096 edges, then 4x more in each next band),
//!   each its own zstd frame with its largest and smallest |val| in the chunk table: top-k and
//!   a threshold decode only the first chunks, which is what serving a graph asks for, while
//!   the large bands compress almost like one sorted edge list.
//! - Inside a chunk edges are sorted by (target, source) and delta-coded as varints: a target's
//!   edges are adjacent, so the edges into a node are a binary search in each chunk.
//! - float32 values are split into byte planes before zstd: exponents and high mantissa bytes of
//!   nearby values repeat, which zstd finds only when they are adjacent.

pub mod codec;
pub mod index;
pub mod layers;
pub mod seed;
pub mod serve;
mod varint;

pub use codec::{Edges, Graph, GraphReader, Node, ValueType, encode};
pub use index::{ComponentIndex, Mode};
