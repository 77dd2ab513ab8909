//! Packing to and from the 80-byte little-endian rows.

use attnfast_core::{Layout, pack};
use numpy::{PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::{py, shape_error};
use crate::fingerprint::to_rows;

/// Packs `(T, dim)` float32 rows of the layout with code `layout` into bytes.
#[pyfunction]
pub fn pack_fingerprints<'py>(
    py_: Python<'py>,
    fps: PyReadonlyArray2<'py, f32>,
    layout: u32,
) -> PyResult<Bound<'py, PyBytes>> {
    let layout = py(Layout::from_code(layout))?;
    if fps.shape()[1] != layout.dim() {
        return Err(shape_error(format!(
            "fingerprints must have {} columns for layout {}, got shape {:?}",
            layout.dim(),
            layout.name(),
            fps.shape()
        )));
    }
    let values = fps
        .as_slice()
        .map_err(|_| shape_error("fingerprints must be a C-contiguous float32 array"))?;
    let blob = py(py_.detach(|| pack::pack(values, layout)))?;
    Ok(PyBytes::new(py_, &blob))
}

/// Unpacks whole rows of the layout with code `layout` into a `(T, dim)` float32 array.
#[pyfunction]
pub fn unpack_fingerprints<'py>(
    py_: Python<'py>,
    blob: &[u8],
    layout: u32,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let layout = py(Layout::from_code(layout))?;
    let values = py(py_.detach(|| pack::unpack(blob, layout)))?;
    to_rows(py_, values, layout.dim())
}
