//! The explorer's JSON messages, decoded by the core and appended to a store, with the
//! interpreter released around the decoding.

use std::sync::{Arc, RwLock};

use attnfast_core::Layout;
use attnfast_core::discovery::Classifier;
use attnfast_core::discovery::ingest::classify_batch;
use attnfast_core::store::messages::{Decoded, MessageDecoder};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::discovery::PyClassifier;
use crate::error::{invalid_error, py, to_py_err};
use crate::store::{PyStore, PyTicket};

/// Decodes the SGLang explorer's JSON messages in Rust and appends them to a store.
#[pyclass(frozen, name = "MessageDecoder", module = "attnfast._core")]
pub struct PyMessageDecoder {
    inner: std::sync::Mutex<MessageDecoder>,
    /// Classifies the rows as they are stored, when set (the sidecar's `--discovery`).
    classifier: RwLock<Option<Arc<Classifier>>>,
}

/// `(tickets of the appended batches, [(message index, error), ...])`.
type Appended = (Vec<PyTicket>, Vec<(usize, String)>);

fn described(errors: &[(usize, attnfast_core::CoreError)]) -> Vec<(usize, String)> {
    errors.iter().map(|(i, e)| (*i, e.to_string())).collect()
}

impl PyMessageDecoder {
    fn decoder(&self) -> std::sync::MutexGuard<'_, MessageDecoder> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the decoded rows their cluster, if a classifier is set.
    fn classified(&self, mut decoded: Decoded) -> Decoded {
        let classifier = self
            .classifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(c) = classifier {
            for batch in &mut decoded.batches {
                classify_batch(&c, batch);
            }
        }
        decoded
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
            classifier: RwLock::new(None),
        })
    }

    /// Sets (or with None, removes) the classifier that gives stored rows their cluster.
    fn set_classifier(&self, classifier: Option<&PyClassifier>) {
        *self.classifier.write().unwrap_or_else(|e| e.into_inner()) =
            classifier.map(PyClassifier::shared);
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
            let mut decoded = self.decoder().decode_raw(&raw, all_or_nothing);
            let errors = described(&std::mem::take(&mut decoded.errors));
            let tickets = store.inner.append_decoded(self.classified(decoded))?;
            Ok((tickets.into_iter().map(PyTicket::new).collect(), errors))
        })
        .map_err(to_py_err)
    }

    /// Decodes one message and appends it, or raises its error (`DecodeError` when it is not
    /// JSON, `InvalidInputError` naming the field otherwise).
    fn append_one(&self, py_: Python<'_>, store: &PyStore, message: &[u8]) -> PyResult<PyTicket> {
        let message = message.to_vec();
        py_.detach(|| {
            let decoded = self.decoder().decode_one(&message)?;
            let mut tickets = store.inner.append_decoded(self.classified(decoded))?;
            Ok(PyTicket::new(
                tickets.pop().expect("one message, one batch"),
            ))
        })
        .map_err(to_py_err)
    }

    /// Decodes a request body (a JSON list of messages or `{"fingerprints": [...]}`) and
    /// appends it whole, or nothing: returns the refused messages instead. The body is read
    /// in place (`bytes` or `bytearray`, which the caller must not change meanwhile).
    fn append_body(
        &self,
        py_: Python<'_>,
        store: &PyStore,
        body: &Bound<'_, PyAny>,
    ) -> PyResult<Appended> {
        let view = pyo3::buffer::PyBuffer::<u8>::get(body)?;
        if !view.is_c_contiguous() {
            return Err(invalid_error("the body must be contiguous bytes"));
        }
        let (ptr, len) = (view.buf_ptr() as usize, view.len_bytes());
        let result = py_.detach(|| {
            // Safety: the buffer stays exported (and so alive and unmoved) while `view` lives,
            // and the sidecar does not touch the body while it is decoded.
            let body = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
            let mut decoded = self.decoder().decode_body(body)?;
            let errors = described(&std::mem::take(&mut decoded.errors));
            let tickets = store.inner.append_decoded(self.classified(decoded))?;
            Ok((tickets.into_iter().map(PyTicket::new).collect(), errors))
        });
        drop(view);
        result.map_err(to_py_err)
    }
}
