//! The one error type of the core. Each variant is a category that the bindings map to one
//! Python exception; the message says what was wrong and where.

/// Errors raised by the core. Messages name the row, index or byte offset at fault.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    /// An attention value or position is not usable: NaN, infinite, negative, a row that sums
    /// to zero, a position outside the context, a repeated top-k position.
    #[error("{0}")]
    AttentionValue(String),
    /// Array shapes disagree or have the wrong number of dimensions.
    #[error("{0}")]
    Shape(String),
    /// A packed blob, or a fingerprint about to be packed, is malformed.
    #[error("{0}")]
    Blob(String),
    /// Bytes that are not in the format they claim to be: JSON that does not parse.
    #[error("{0}")]
    Decode(String),
    /// A layout name or code that this version does not know.
    #[error("{0}")]
    Layout(String),
    /// Any other refused input: an empty request id, an unknown zone or phase name, columns of
    /// different lengths.
    #[error("{0}")]
    Invalid(String),
    /// The database could not be opened, read or written (I/O, corruption, a closed store).
    #[error("{0}")]
    Store(String),
    /// Rows whose `(request_id, step)` was already stored, under the `error` duplicate policy.
    /// The other rows of their batches were committed.
    #[error("{0}")]
    Duplicate(String),
    /// A file that should exist does not (a capture file to read).
    #[error("{0}")]
    Missing(String),
    /// A capture file that cannot be created, or that is not one, or whose chunks are damaged;
    /// the message names the file and the chunk.
    #[error("{0}")]
    Capture(String),
    /// A discovery artifact that cannot be used: from another format version, truncated,
    /// inconsistent with its manifest; the message names the file.
    #[error("{0}")]
    Artifact(String),
    /// An attribution graph blob that cannot be decoded, or a graph that cannot be encoded (a
    /// repeated node or edge, a value that is not finite); the message says what and where.
    #[error("{0}")]
    Graph(String),
}

impl From<rusqlite::Error> for CoreError {
    fn from(e: rusqlite::Error) -> Self {
        CoreError::Store(format!("SQLite: {e}"))
    }
}

impl From<std::io::Error> for CoreError {
    fn from(e: std::io::Error) -> Self {
        CoreError::Store(format!("I/O: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, CoreError>;
