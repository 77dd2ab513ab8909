//! The binary full-attention capture format (`.attn`), spec in `docs/capture-format.md`.
//!
//! Why this shape: a full capture is large (the seed's JSON is 1.6 MB per token), written while
//! a model generates, and read back one step at a time. So the file is a sequence of
//! independently compressed chunks, each with its own checksum: the writer holds at most a
//! few chunks in memory however long the generation, a crash loses only the chunk being
//! written, a damaged chunk loses only its own steps, and a reader decompresses only the
//! chunk that holds the step it wants. Attention is stored as float16 with its two byte planes
//! split apart (all low bytes, then all high bytes), which zstd compresses about twice as well
//! as interleaved float16.

mod chunk;
mod reader;
mod record;
mod writer;

pub use chunk::{ChunkKind, FILE_MAGIC, FORMAT_VERSION};
pub use reader::{CaptureReader, ChunkProblem};
pub use record::{Record, StepHeader};
pub use writer::{CaptureWriter, WriterOptions};
