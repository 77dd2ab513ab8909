//! The one error type of the core. Each variant is a category that the bindings map to one
//! Python exception; the message says what was wrong and where.

/// Errors raised by the core. Messages name the row, index or byte offset at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    /// A layout name or code that this version does not know.
    #[error("{0}")]
    Layout(String),
}

pub type Result<T> = std::result::Result<T, CoreError>;
