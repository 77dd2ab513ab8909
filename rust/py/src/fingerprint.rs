//! Fingerprint computation. The Python wrapper (`attnfast/fingerprint.py`) handles dtypes and
//! torch tensors; these take C-contiguous numpy arrays without copying them.

use attnfast_core::FINGERPRINT_DIM;
use attnfast_core::fingerprint::{self, AttnShape, Element, TopkShape};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::error::{py, shape_error};

fn attn_shape(dims: &[usize]) -> PyResult<AttnShape> {
    match *dims {
        [layers, heads, keys] => Ok(AttnShape {
            steps: 1,
            layers,
            heads,
            keys,
        }),
        [steps, layers, heads, keys] => Ok(AttnShape {
            steps,
            layers,
            heads,
            keys,
        }),
        _ => Err(shape_error(format!(
            "attention must be (L, H, N) for one step or (T, L, H, N) for T steps, got {} \
             dimensions {dims:?}",
            dims.len()
        ))),
    }
}

fn contiguous<'a, T: numpy::Element>(
    a: &'a numpy::PyReadonlyArray<'_, T, numpy::ndarray::IxDyn>,
    what: &str,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| shape_error(format!("{what} must be a C-contiguous array")))
}

fn queries(q: &Option<PyReadonlyArray1<'_, i64>>) -> PyResult<Option<Vec<i64>>> {
    q.as_ref()
        .map(|q| q.as_slice().map(<[i64]>::to_vec))
        .transpose()
        .map_err(|_| shape_error("query_positions must be a contiguous int64 array"))
}

fn dense<'py, E: Element + numpy::Element>(
    py_: Python<'py>,
    attn: PyReadonlyArrayDyn<'py, E>,
    query_positions: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let shape = attn_shape(attn.shape())?;
    let data = contiguous(&attn, "attention")?;
    let q = queries(&query_positions)?;
    let out = py_.detach(|| fingerprint::compute_dense(data, shape, q.as_deref()));
    to_rows(py_, py(out)?, FINGERPRINT_DIM)
}

/// A `(len / width, width)` float32 array that takes ownership of `flat` (no copy).
pub fn to_rows(
    py_: Python<'_>,
    flat: Vec<f32>,
    width: usize,
) -> PyResult<Bound<'_, PyArray2<f32>>> {
    let array = Array2::from_shape_vec((flat.len() / width, width), flat)
        .map_err(|e| shape_error(e.to_string()))?;
    Ok(array.into_pyarray(py_))
}

/// Fingerprints of float32 attention `(L, H, N)` or `(T, L, H, N)`; returns `(T, 20)`.
#[pyfunction]
#[pyo3(signature = (attn, query_positions=None))]
pub fn fingerprints_f32<'py>(
    py_: Python<'py>,
    attn: PyReadonlyArrayDyn<'py, f32>,
    query_positions: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    dense(py_, attn, query_positions)
}

/// Fingerprints of float16 attention, widened exactly inside the kernel (no float32 copy).
#[pyfunction]
#[pyo3(signature = (attn, query_positions=None))]
pub fn fingerprints_f16<'py>(
    py_: Python<'py>,
    attn: PyReadonlyArrayDyn<'py, half::f16>,
    query_positions: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    dense(py_, attn, query_positions)
}

/// Fingerprints of top-k entries: positions and scores `(T, L, H, k)`, one query position per
/// step, over a context of `context_length` keys; returns `(T, 20)`.
#[pyfunction]
pub fn fingerprints_topk<'py>(
    py_: Python<'py>,
    positions: PyReadonlyArrayDyn<'py, i64>,
    scores: PyReadonlyArrayDyn<'py, f32>,
    query_positions: PyReadonlyArray1<'py, i64>,
    context_length: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let &[steps, layers, heads, k] = positions.shape() else {
        return Err(shape_error(format!(
            "top-k positions must be (T, L, H, k), got shape {:?}",
            positions.shape()
        )));
    };
    if scores.shape() != positions.shape() {
        return Err(shape_error(format!(
            "top-k scores have shape {:?} but positions have {:?}",
            scores.shape(),
            positions.shape()
        )));
    }
    let shape = TopkShape {
        steps,
        layers,
        heads,
        k,
    };
    let pos = contiguous(&positions, "top-k positions")?;
    let sc = contiguous(&scores, "top-k scores")?;
    let q = query_positions
        .as_slice()
        .map_err(|_| shape_error("query_positions must be a contiguous int64 array"))?;
    let out = py_.detach(|| fingerprint::compute_sparse(pos, sc, shape, q, context_length));
    to_rows(py_, py(out)?, FINGERPRINT_DIM)
}

/// Caps the vector path (`"baseline"`, `"avx2+fma"`, `"avx512"`); tests use it to run every
/// path on one machine. Returns the path now in use.
#[pyfunction]
pub fn set_simd_limit(limit: &str) -> PyResult<&'static str> {
    let level = fingerprint::simd::Level::from_name(limit)
        .ok_or_else(|| shape_error(format!("unknown SIMD level {limit:?}")))?;
    fingerprint::simd::set_limit(level);
    Ok(fingerprint::simd::level().name())
}
