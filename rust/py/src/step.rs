//! One captured decode step (`attnfast_core::step`): rows from queries and keys, and their
//! summaries. Queries and keys are read in place from torch tensors (no copies).

use attnfast_core::fingerprint::AttnShape;
use attnfast_core::step::{self, LayerQueryKeys, SUMMARY_BASE};
use numpy::ndarray::{Array4, Axis, Ix4};
use numpy::{
    IntoPyArray, PyArray2, PyArray4, PyReadonlyArray3, PyReadonlyArray4, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::error::{py, shape_error};
use crate::fingerprint::to_rows;
use crate::torch_view::TensorView;

type Summary<'py> = (
    Bound<'py, PyArray2<f32>>,
    Option<Bound<'py, PyArray4<f32>>>,
    usize,
);

/// Rows `softmax(q k^T * scale + bias)` of one query per sequence for every layer, and their
/// summaries `(B, 21 + 2k)`, the rows `(B, L, H', N)` when `want_rows`, and `N`. Each layer
/// gives its queries `(B, H, Q, D)` (the last of the `Q` rows is the one captured) and keys
/// `(B, KV, N, D)` as float32 CPU torch tensors, an optional additive bias `(B|1, H|1, N)`
/// (numpy) and a scale; `heads` selects query heads.
#[pyfunction]
#[pyo3(signature = (queries, keys, biases, scales, heads, pads, topk, want_rows))]
#[allow(clippy::too_many_arguments)]
pub fn attention_step<'py>(
    py_: Python<'py>,
    queries: Vec<Bound<'py, PyAny>>,
    keys: Vec<Bound<'py, PyAny>>,
    biases: Vec<Option<PyReadonlyArray3<'py, f32>>>,
    scales: Vec<f32>,
    heads: Option<Vec<usize>>,
    pads: Vec<usize>,
    topk: usize,
    want_rows: bool,
) -> PyResult<Summary<'py>> {
    let layers = queries.len();
    if keys.len() != layers || biases.len() != layers || scales.len() != layers {
        return Err(shape_error(format!(
            "{layers} queries, {} keys, {} masks and {} scales: one of each per layer",
            keys.len(),
            biases.len(),
            scales.len()
        )));
    }
    let tensors = queries
        .into_iter()
        .zip(keys)
        .enumerate()
        .map(|(l, (q, k))| {
            Ok((
                TensorView::new(q, 4, || format!("layer {l} queries"))?,
                TensorView::new(k, 4, || format!("layer {l} keys"))?,
            ))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let inputs: Vec<LayerQueryKeys<'_>> = tensors
        .iter()
        .zip(&biases)
        .zip(&scales)
        .map(|(((q, k), bias), &scale)| {
            let q = q
                .view()
                .into_dimensionality::<Ix4>()
                .expect("4 dimensions, checked");
            let last = q.len_of(Axis(2)) - 1; // non-empty, checked
            LayerQueryKeys {
                query: q.index_axis_move(Axis(2), last),
                keys: k
                    .view()
                    .into_dimensionality::<Ix4>()
                    .expect("4 dimensions, checked"),
                bias: bias.as_ref().map(|b| b.as_array()),
                scale,
            }
        })
        .collect();
    let result = py_.detach(|| {
        let rows = step::query_rows(&inputs, heads.as_deref())?;
        let summary = step::step_rows_summary(&rows, &pads, topk)?;
        Ok((rows, summary))
    });
    let (rows, summary) = py(result)?;
    let shape = rows.shape;
    let rows = want_rows
        .then(|| rows_array(py_, rows.into_rows(), shape))
        .transpose()?;
    let summary = to_rows(py_, summary, SUMMARY_BASE + 2 * topk.min(shape.keys))?;
    Ok((summary, rows, shape.keys))
}

/// Summaries `(B, 21 + 2k)` of rows the model gave (`(B, L, H, N)`, C-contiguous).
#[pyfunction]
pub fn step_summary<'py>(
    py_: Python<'py>,
    rows: PyReadonlyArray4<'py, f32>,
    pads: Vec<usize>,
    topk: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let &[steps, layers, heads, keys] = rows.shape() else {
        unreachable!("a 4-dimensional array")
    };
    let shape = AttnShape {
        steps,
        layers,
        heads,
        keys,
    };
    let data = rows
        .as_slice()
        .map_err(|_| shape_error("rows must be a C-contiguous array"))?;
    let summary = py(py_.detach(|| step::step_summary(data, shape, &pads, topk)))?;
    to_rows(py_, summary, SUMMARY_BASE + 2 * topk.min(keys))
}

fn rows_array(py_: Python<'_>, rows: Vec<f32>, s: AttnShape) -> PyResult<Bound<'_, PyArray4<f32>>> {
    let array = Array4::from_shape_vec((s.steps, s.layers, s.heads, s.keys), rows)
        .map_err(|e| shape_error(e.to_string()))?;
    Ok(array.into_pyarray(py_))
}
