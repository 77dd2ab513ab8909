//! Capture files (`.attn`): the writer the capture hooks feed while a model generates, and the
//! reader behind `attnfast.CaptureFile`. Both release the interpreter around file work.

use std::path::PathBuf;
use std::sync::Mutex;

use attnfast_core::capture::{CaptureReader, CaptureWriter, Record, StepHeader, WriterOptions};
use numpy::ndarray::Array3;
use numpy::{IntoPyArray, PyArray1, PyArray3, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::error::{dtype_error, py, shape_error, to_py_err};
use attnfast_core::CoreError;

fn closed(what: &str) -> PyErr {
    to_py_err(CoreError::Capture(format!("the capture {what} is closed")))
}

/// The attention's `(layers, heads, keys)` as the header's counts.
fn dims(shape: &[usize]) -> PyResult<(u16, u16, u32)> {
    match shape {
        [l, h, n] => Ok((
            u16::try_from(*l).map_err(|_| shape_error("at most 65535 layers per step"))?,
            u16::try_from(*h).map_err(|_| shape_error("at most 65535 heads per step"))?,
            u32::try_from(*n).map_err(|_| shape_error("at most 2^32 - 1 keys per row"))?,
        )),
        _ => Err(shape_error(format!(
            "a step's attention must be (layers, heads, keys), got shape {shape:?}"
        ))),
    }
}

/// Writes a capture file (see `attnfast.CaptureFile.create`).
#[pyclass(frozen, name = "CaptureWriter", module = "attnfast._core")]
pub struct PyCaptureWriter {
    inner: Mutex<Option<CaptureWriter>>,
}

impl PyCaptureWriter {
    fn with<T>(
        &self,
        py_: Python<'_>,
        f: impl FnOnce(&mut CaptureWriter) -> attnfast_core::Result<T> + Send,
    ) -> PyResult<T>
    where
        T: Send,
    {
        // Why the lock is taken without the interpreter: a thread holding the lock while
        // waiting for the interpreter, and one holding the interpreter while waiting for the
        // lock, would deadlock.
        py_.detach(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_mut() {
                Some(w) => f(w).map_err(to_py_err),
                None => Err(closed("writer")),
            }
        })
    }
}

#[pymethods]
impl PyCaptureWriter {
    #[new]
    #[pyo3(signature = (path, meta_json, chunk_bytes, level))]
    fn new(
        py_: Python<'_>,
        path: PathBuf,
        meta_json: &str,
        chunk_bytes: usize,
        level: i32,
    ) -> PyResult<Self> {
        let opts = WriterOptions { chunk_bytes, level };
        let w = py(py_.detach(|| CaptureWriter::create(&path, meta_json, opts)))?;
        Ok(Self {
            inner: Mutex::new(Some(w)),
        })
    }

    fn write_meta(&self, py_: Python<'_>, meta_json: &str) -> PyResult<()> {
        self.with(py_, |w| w.write_meta(meta_json))
    }

    /// Appends one step (or, with `prompt`, one prompt row); `attention` is a C-contiguous
    /// float32 or float16 `(L, H, N)` array.
    #[pyo3(signature = (sequence, step, token_id, position, timestamp_ms, text, attention, prompt=false))]
    #[allow(clippy::too_many_arguments)]
    fn write_step(
        &self,
        py_: Python<'_>,
        sequence: u32,
        step: u32,
        token_id: i64,
        position: u32,
        timestamp_ms: i64,
        text: String,
        attention: &Bound<'_, PyAny>,
        prompt: bool,
    ) -> PyResult<()> {
        let kind = if prompt { Record::Prompt } else { Record::Step };
        let header = |shape: &[usize]| -> PyResult<StepHeader> {
            let (layers, heads, context_len) = dims(shape)?;
            Ok(StepHeader {
                sequence,
                step,
                token_id,
                position,
                timestamp_ms,
                layers,
                heads,
                context_len,
                text: text.clone(),
            })
        };
        if let Ok(a) = attention.extract::<PyReadonlyArrayDyn<'_, f32>>() {
            let h = header(a.shape())?;
            let v = a
                .as_slice()
                .map_err(|_| shape_error("attention must be C-contiguous"))?;
            return self.with(py_, |w| w.write_f32(kind, &h, v));
        }
        let a = attention
            .extract::<PyReadonlyArrayDyn<'_, half::f16>>()
            .map_err(|_| dtype_error("attention must be a float32 or float16 numpy array"))?;
        let h = header(a.shape())?;
        let v = a
            .as_slice()
            .map_err(|_| shape_error("attention must be C-contiguous"))?;
        self.with(py_, |w| w.write_f16(kind, &h, v))
    }

    #[getter]
    fn steps(&self) -> u32 {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|w| w.steps()).unwrap_or(0)
    }

    #[getter]
    fn prompt_rows(&self) -> u32 {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|w| w.prompt_rows()).unwrap_or(0)
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Seals the file with its index; returns its size in bytes. Closing twice is a no-op (0).
    fn close(&self, py_: Python<'_>) -> PyResult<u64> {
        py(py_.detach(
            || match self.inner.lock().unwrap_or_else(|e| e.into_inner()).take() {
                Some(w) => w.close(),
                None => Ok(0),
            },
        ))
    }
}

/// Reads a capture file (see `attnfast.CaptureFile`).
#[pyclass(frozen, name = "CaptureReader", module = "attnfast._core")]
pub struct PyCaptureReader {
    inner: Mutex<CaptureReader>,
}

/// The step table as columns: sequence, step, token_id, position, timestamp_ms, layers,
/// heads, context_len, texts.
type StepTable<'py> = (
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<u16>>,
    Bound<'py, PyArray1<u16>>,
    Bound<'py, PyArray1<u32>>,
    Vec<String>,
);

#[pymethods]
impl PyCaptureReader {
    #[new]
    fn new(py_: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let r = py(py_.detach(|| CaptureReader::open(&path)))?;
        Ok(Self {
            inner: Mutex::new(r),
        })
    }

    fn meta_json(&self) -> String {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::Value::Object(r.meta().clone()).to_string()
    }

    #[getter]
    fn indexed(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .indexed()
    }

    /// Problems found while opening: `[(chunk, byte offset, message), ...]`.
    fn problems(&self) -> Vec<(usize, u64, String)> {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.problems()
            .iter()
            .map(|p| (p.chunk, p.offset, p.message.clone()))
            .collect()
    }

    /// Reads every chunk; returns every problem, including those found while opening.
    fn verify(&self, py_: Python<'_>) -> Vec<(usize, u64, String)> {
        py_.detach(|| {
            self.inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .verify()
        })
        .into_iter()
        .map(|p| (p.chunk, p.offset, p.message))
        .collect()
    }

    fn __len__(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The table of the steps (or, with `prompt`, of the prompt rows), as columns.
    #[pyo3(signature = (prompt=false))]
    fn steps<'py>(&self, py_: Python<'py>, prompt: bool) -> StepTable<'py> {
        let kind = if prompt { Record::Prompt } else { Record::Step };
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let headers = || r.record_headers(kind);
        let col = |f: &dyn Fn(&StepHeader) -> u32| headers().map(f).collect::<Vec<u32>>();
        (
            col(&|h| h.sequence).into_pyarray(py_),
            col(&|h| h.step).into_pyarray(py_),
            headers()
                .map(|h| h.token_id)
                .collect::<Vec<_>>()
                .into_pyarray(py_),
            col(&|h| h.position).into_pyarray(py_),
            headers()
                .map(|h| h.timestamp_ms)
                .collect::<Vec<_>>()
                .into_pyarray(py_),
            headers()
                .map(|h| h.layers)
                .collect::<Vec<_>>()
                .into_pyarray(py_),
            headers()
                .map(|h| h.heads)
                .collect::<Vec<_>>()
                .into_pyarray(py_),
            col(&|h| h.context_len).into_pyarray(py_),
            headers().map(|h| h.text.clone()).collect(),
        )
    }

    /// The attention of step `i` (or prompt row `i`), position in the file, as float32
    /// `(L, H, N)`.
    #[pyo3(signature = (i, prompt=false))]
    fn read<'py>(
        &self,
        py_: Python<'py>,
        i: usize,
        prompt: bool,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let kind = if prompt { Record::Prompt } else { Record::Step };
        let (shape, values) = py(py_.detach(|| {
            let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let h = r.record_header(kind, i)?;
            let shape = (h.layers as usize, h.heads as usize, h.context_len as usize);
            let mut out = Vec::new();
            r.read_record(kind, i, &mut out)?;
            Ok((shape, out))
        }))?;
        let a = Array3::from_shape_vec(shape, values).map_err(|e| shape_error(e.to_string()))?;
        Ok(a.into_pyarray(py_))
    }
}
