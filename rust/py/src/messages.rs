//! The explorer's JSON messages, decoded by the core and appended to a store, with the
//! interpreter released around the decoding.

use attnfast_core::Layout;
use attnfast_core::store::messages::MessageDecoder;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::error::{invalid_error, py, to_py_err};
use crate::store::PyStore;

/// Decodes the SGLang explorer's JSON messages in Rust and appends them to a store.
#[pyclass(frozen, name = "MessageDecoder", module = "attnfast._core")]
pub struct PyMessageDecoder {
    inner: std::sync::Mutex<MessageDecoder>,
}

/// `(rows appended, [(message index, error), ...])`.
type Appended = (usize, Vec<(usize, String)>);

impl PyMessageDecoder {
    fn decoder(&self) -> std::sync::MutexGuard<'_, MessageDecoder> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PyMessageDecoder {
    #[new]
    fn new(default_layout: u32) -> PyResult<Self> {
        Ok(Self {
            inner: std::sync::Mutex::new(MessageDecoder::new(py(Layout::from_code(
                default_layout,
            ))?)),
        })
    }

    /// Decodes raw messages (bytes, one JSON object each) and appends the good ones (all or
    /// none with `all_or_nothing`).
    fn append_raw(
        &self,
        py_: Python<'_>,
        store: &PyStore,
        messages: &Bound<'_, PyList>,
        all_or_nothing: bool,
    ) -> PyResult<Appended> {
        // One contiguous copy, so that decoding can run without the interpreter.
        let mut buffer = Vec::new();
        let mut ends = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let bytes = m
                .cast::<PyBytes>()
                .map_err(|_| invalid_error(format!("messages[{i}] must be bytes")))?;
            buffer.extend_from_slice(bytes.as_bytes());
            ends.push(buffer.len());
        }
        py_.detach(|| {
            let mut start = 0;
            let raw: Vec<&[u8]> = ends
                .iter()
                .map(|&end| {
                    let m = &buffer[start..end];
                    start = end;
                    m
                })
                .collect();
            let decoded = self.decoder().decode_raw(&raw, all_or_nothing);
            let errors = decoded.errors.clone();
            let rows = store.inner.append_decoded(decoded)?;
            Ok((rows, errors))
        })
        .map_err(to_py_err)
    }

    /// Decodes a request body (a JSON list of messages or `{"fingerprints": [...]}`) and
    /// appends it whole, or nothing: returns the refused messages instead.
    fn append_body(&self, py_: Python<'_>, store: &PyStore, body: &[u8]) -> PyResult<Appended> {
        let body = body.to_vec();
        py_.detach(|| {
            let decoded = self.decoder().decode_body(&body)?;
            let errors = decoded.errors.clone();
            let rows = store.inner.append_decoded(decoded)?;
            Ok((rows, errors))
        })
        .map_err(to_py_err)
    }
}
