//! The one mapping from core errors to Python exceptions. The classes live in
//! `attnfast/exceptions.py` so that they can inherit from both `AttnfastError` and `ValueError`.

use attnfast_core::CoreError;
use pyo3::PyErr;

pyo3::import_exception!(attnfast.exceptions, AttentionValueError);
pyo3::import_exception!(attnfast.exceptions, ShapeError);
pyo3::import_exception!(attnfast.exceptions, BlobError);
pyo3::import_exception!(attnfast.exceptions, LayoutError);

pub struct CoreErr(pub CoreError);

impl From<CoreError> for CoreErr {
    fn from(e: CoreError) -> Self {
        CoreErr(e)
    }
}

impl From<CoreErr> for PyErr {
    fn from(CoreErr(e): CoreErr) -> PyErr {
        match e {
            CoreError::AttentionValue(m) => AttentionValueError::new_err(m),
            CoreError::Shape(m) => ShapeError::new_err(m),
            CoreError::Blob(m) => BlobError::new_err(m),
            CoreError::Layout(m) => LayoutError::new_err(m),
        }
    }
}

/// Shorthand for converting a core result.
pub fn py<T>(r: attnfast_core::Result<T>) -> Result<T, PyErr> {
    r.map_err(|e| CoreErr(e).into())
}

/// A `ShapeError` with a message, for checks done in the bindings themselves.
pub fn shape_error(msg: impl Into<String>) -> PyErr {
    ShapeError::new_err(msg.into())
}
