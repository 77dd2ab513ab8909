//! The one mapping from core errors to Python exceptions. The classes live in
//! `attnfast/exceptions.py` so that they can inherit from both `AttnfastError` and `ValueError`.

use attnfast_core::CoreError;
use pyo3::PyErr;

pyo3::import_exception!(attnfast.exceptions, AttentionValueError);
pyo3::import_exception!(attnfast.exceptions, ShapeError);
pyo3::import_exception!(attnfast.exceptions, BlobError);
pyo3::import_exception!(attnfast.exceptions, DecodeError);
pyo3::import_exception!(attnfast.exceptions, LayoutError);
pyo3::import_exception!(attnfast.exceptions, InvalidInputError);
pyo3::import_exception!(attnfast.exceptions, StoreError);
pyo3::import_exception!(attnfast.exceptions, DuplicateStepError);
pyo3::import_exception!(attnfast.exceptions, CaptureFileError);
pyo3::import_exception!(attnfast.exceptions, MissingFileError);
pyo3::import_exception!(attnfast.exceptions, DtypeError);
pyo3::import_exception!(attnfast.exceptions, ArtifactError);
pyo3::import_exception!(attnfast.exceptions, GraphError);

/// The Python exception for a core error.
pub fn to_py_err(e: CoreError) -> PyErr {
    match e {
        CoreError::AttentionValue(m) => AttentionValueError::new_err(m),
        CoreError::Shape(m) => ShapeError::new_err(m),
        CoreError::Blob(m) => BlobError::new_err(m),
        CoreError::Decode(m) => DecodeError::new_err(m),
        CoreError::Layout(m) => LayoutError::new_err(m),
        CoreError::Invalid(m) => InvalidInputError::new_err(m),
        CoreError::Store(m) => StoreError::new_err(m),
        CoreError::Duplicate(m) => DuplicateStepError::new_err(m),
        CoreError::Capture(m) => CaptureFileError::new_err(m),
        CoreError::Missing(m) => MissingFileError::new_err(m),
        CoreError::Artifact(m) => ArtifactError::new_err(m),
        CoreError::Graph(m) => GraphError::new_err(m),
    }
}

/// Converts a core result (the orphan rule forbids `impl From<CoreError> for PyErr` here).
pub fn py<T>(r: attnfast_core::Result<T>) -> Result<T, PyErr> {
    r.map_err(to_py_err)
}

/// A `ShapeError` with a message, for checks done in the bindings themselves.
pub fn shape_error(msg: impl Into<String>) -> PyErr {
    ShapeError::new_err(msg.into())
}

/// A `DtypeError` with a message, for arrays of a dtype a binding cannot read.
pub fn dtype_error(msg: impl Into<String>) -> PyErr {
    DtypeError::new_err(msg.into())
}

/// An `InvalidInputError` with a message, for checks done in the bindings themselves.
pub fn invalid_error(msg: impl Into<String>) -> PyErr {
    InvalidInputError::new_err(msg.into())
}
