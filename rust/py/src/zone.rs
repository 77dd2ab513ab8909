//! Zones of v1 fingerprints, as codes into `ZONE_NAMES` and confidences.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::error::{py, shape_error};

/// Zone codes and their confidences, one each per fingerprint.
type Zones<'py> = (Bound<'py, PyArray1<u8>>, Bound<'py, PyArray1<f32>>);

/// Zone codes (uint8) and confidences (float32) of `(T, 20)` fingerprints.
#[pyfunction]
pub fn zone_codes<'py>(py_: Python<'py>, fps: PyReadonlyArray2<'py, f32>) -> PyResult<Zones<'py>> {
    if fps.shape()[1] != attnfast_core::FINGERPRINT_DIM {
        return Err(shape_error(format!(
            "fingerprints must be (T, 20), got shape {:?}",
            fps.shape()
        )));
    }
    let values = fps
        .as_slice()
        .map_err(|_| shape_error("fingerprints must be a C-contiguous float32 array"))?;
    let (codes, confidences) = py(py_.detach(|| attnfast_core::zone::zones_of(values)))?;
    Ok((codes.into_pyarray(py_), confidences.into_pyarray(py_)))
}
