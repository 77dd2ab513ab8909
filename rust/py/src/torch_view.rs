//! Read-only ndarray views of float32 CPU torch tensors, taken without numpy.
//!
//! Why: a captured decode step hands the kernel two tensors per layer, and `Tensor.numpy()`
//! costs 1 to 2.5 microseconds each inside a running model, a tenth of a small model's step.
//! Reading `data_ptr()`, `shape` and `stride()` costs a fraction of that. The view aliases
//! the tensor's memory exactly as `Tensor.numpy()` would, with the same caveat: another thread
//! must not resize the tensor while the kernel reads it.

use numpy::ndarray::{ArrayView, IntoDimension, IxDyn, ShapeBuilder};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;
use pyo3::{Py, intern};

use crate::error::shape_error;

/// A tensor's memory layout, checked; `view` borrows it.
pub struct TensorView<'py> {
    // Keeps the tensor (and so its storage) alive while the view is in use.
    _tensor: Bound<'py, PyAny>,
    ptr: *const f32,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// The integers of a tuple (`torch.Size` and `stride()` are tuples): read as a tuple, which
/// skips the generic sequence protocol.
fn ints(tuple: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    tuple
        .cast::<PyTuple>()?
        .iter()
        .map(|v| v.extract::<i64>())
        .collect()
}

/// `torch.<name>`, looked up once.
fn torch_attr<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || Ok(py.import("torch")?.getattr(name)?.unbind()))
        .map(|t| t.bind(py))
}

impl<'py> TensorView<'py> {
    /// Checks that `tensor` is a non-empty float32 CPU tensor of `ndim` dimensions; `what`
    /// names it in errors (a closure: the name is only formatted when there is an error).
    pub fn new(
        tensor: Bound<'py, PyAny>,
        ndim: usize,
        what: impl Fn() -> String,
    ) -> PyResult<Self> {
        static TENSOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static FLOAT32: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let py = tensor.py();
        // A real tensor, not an object that merely answers to the same names: the pointer is
        // dereferenced below.
        if !tensor.is_instance(torch_attr(py, &TENSOR, "Tensor")?)? {
            let kind = tensor.get_type().name()?;
            return Err(shape_error(format!(
                "{} must be a torch tensor, not {kind}",
                what()
            )));
        }
        let dtype = tensor.getattr(intern!(py, "dtype"))?;
        if !dtype.is(torch_attr(py, &FLOAT32, "float32")?) {
            return Err(shape_error(format!(
                "{} must be float32, not {dtype}",
                what()
            )));
        }
        if !tensor.getattr(intern!(py, "is_cpu"))?.extract::<bool>()? {
            let device = tensor.getattr(intern!(py, "device"))?;
            return Err(shape_error(format!(
                "{} must be on the CPU, not {device}",
                what()
            )));
        }
        // Sizes are never negative; the conversion cannot fail on a tensor.
        let shape: Vec<usize> = ints(&tensor.getattr(intern!(py, "shape"))?)?
            .into_iter()
            .map(|v| v.max(0) as usize)
            .collect();
        let strides = ints(&tensor.call_method0(intern!(py, "stride"))?)?;
        if shape.len() != ndim || shape.contains(&0) {
            return Err(shape_error(format!(
                "{} must be a non-empty {ndim}-dimensional tensor, got shape {shape:?}",
                what()
            )));
        }
        // torch never makes negative strides; refuse rather than trust it.
        let strides = strides
            .iter()
            .map(|&s| usize::try_from(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| shape_error(format!("{} has negative strides {strides:?}", what())))?;
        let ptr = tensor
            .call_method0(intern!(py, "data_ptr"))?
            .extract::<usize>()? as *const f32;
        if ptr.is_null() || !ptr.is_aligned() {
            return Err(shape_error(format!(
                "{} has an unaligned data pointer",
                what()
            )));
        }
        Ok(TensorView {
            _tensor: tensor,
            ptr,
            shape,
            strides,
        })
    }

    /// The tensor as an ndarray view.
    pub fn view(&self) -> ArrayView<'_, f32, IxDyn> {
        let dim = self.shape.clone().into_dimension();
        let strides = self.strides.clone().into_dimension();
        // SAFETY: the pointer, shape and strides are the tensor's own (non-empty, aligned,
        // non-negative strides), so every element the view reaches lies in its storage, which
        // `_tensor` keeps alive for the view's lifetime. Nothing here writes to it.
        unsafe { ArrayView::from_shape_ptr(dim.strides(strides), self.ptr) }
    }
}
