//! The fingerprint store. `attnfast/store.py` normalises arguments (dtypes, scalars, names to
//! codes) and builds Arrow tables; this file moves columns in and out of the core.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use attnfast_core::store::runs::{ClusterColumns, Statement};
use attnfast_core::store::{
    Batch, DuplicatePolicy, ListColumn, Query, Rows, SqlValue, Store, StoreOptions, Synchronous,
    TextColumn, Ticket, Written,
};
use attnfast_core::{FINGERPRINT_DIM, Layout};
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::error::{invalid_error, py, shape_error};
use crate::fingerprint::to_rows;

/// Distinct request ids and each row's index into them. `ids` is one string (every row) or a
/// sequence of strings; runs of the same id (the usual case: a request's steps) cost one
/// comparison per row.
fn request_columns(ids: &Bound<'_, PyAny>, rows: usize) -> PyResult<(Vec<String>, Vec<u32>)> {
    if let Ok(s) = ids.cast::<PyString>() {
        return Ok((vec![s.to_str()?.to_owned()], vec![0; rows]));
    }
    let mut distinct: Vec<String> = Vec::new();
    let mut index_of: HashMap<String, u32> = HashMap::new();
    let mut index = Vec::with_capacity(rows);
    let mut last: Option<u32> = None;
    for (row, item) in ids.try_iter()?.enumerate() {
        let item = item?;
        let s = item.cast::<PyString>().map_err(|_| {
            invalid_error(format!(
                "request_ids[{row}] must be a str, got {}",
                item.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let s = s.to_str()?;
        if let Some(i) = last.filter(|&i| distinct[i as usize] == s) {
            index.push(i);
            continue;
        }
        let i = match index_of.get(s) {
            Some(&i) => i,
            None => {
                let i = distinct.len() as u32;
                distinct.push(s.to_owned());
                index_of.insert(s.to_owned(), i);
                i
            }
        };
        last = Some(i);
        index.push(i);
    }
    Ok((distinct, index))
}

fn text_column(v: &Bound<'_, PyAny>, name: &str) -> PyResult<TextColumn> {
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(TextColumn::Same(s.to_str()?.to_owned()));
    }
    let mut out = Vec::new();
    for (row, item) in v.try_iter()?.enumerate() {
        let item = item?;
        if item.is_none() {
            out.push(None);
        } else if let Ok(s) = item.cast::<PyString>() {
            out.push(Some(s.to_str()?.to_owned()));
        } else {
            return Err(invalid_error(format!(
                "{name}[{row}] must be a str or None"
            )));
        }
    }
    Ok(TextColumn::Rows(out))
}

fn vec_of<T: numpy::Element + Copy>(v: &Bound<'_, PyAny>) -> PyResult<Vec<T>> {
    let a: PyReadonlyArray1<'_, T> = v.extract()?;
    Ok(a.as_array().to_vec())
}

/// A nullable integer column from Python's `(values int64, valid bool)`.
fn nullable_ints(v: &Bound<'_, PyAny>) -> PyResult<Vec<Option<i64>>> {
    let (values, valid): (PyReadonlyArray1<'_, i64>, PyReadonlyArray1<'_, bool>) = v.extract()?;
    Ok(values
        .as_array()
        .iter()
        .zip(valid.as_array())
        .map(|(&v, &ok)| ok.then_some(v))
        .collect())
}

/// A list column from Python's `(offsets int64[rows + 1], values)`.
fn list_column<T: numpy::Element + Copy>(
    v: &Bound<'_, PyAny>,
    name: &str,
) -> PyResult<ListColumn<T>> {
    let (offsets, values): (PyReadonlyArray1<'_, i64>, PyReadonlyArray1<'_, T>) = v.extract()?;
    let offsets: Vec<usize> = offsets
        .as_array()
        .iter()
        .map(|&o| o.max(0) as usize)
        .collect();
    let values = values.as_array().to_vec();
    if offsets.windows(2).any(|w| w[0] > w[1]) || offsets.last().is_some_and(|&l| l != values.len())
    {
        return Err(shape_error(format!(
            "{name} offsets do not match its values"
        )));
    }
    Ok(ListColumn { offsets, values })
}

fn fill_columns(batch: &mut Batch, columns: &Bound<'_, PyDict>) -> PyResult<()> {
    for (key, value) in columns.iter() {
        let name: String = key.extract()?;
        match name.as_str() {
            "created_us" => batch.created_us = vec_of(&value)?,
            "session_id" => batch.session_id = Some(text_column(&value, &name)?),
            "token_text" => batch.token_text = Some(text_column(&value, &name)?),
            "model_id" => batch.model_id = Some(text_column(&value, &name)?),
            "token_id" => batch.token_id = Some(nullable_ints(&value)?),
            "segment_idx" => batch.segment_idx = Some(nullable_ints(&value)?),
            "cluster_id" => batch.cluster_id = Some(nullable_ints(&value)?),
            "think_phase" => batch.think_phase = Some(vec_of(&value)?),
            "zone" => batch.zone = Some(vec_of(&value)?),
            "manifold_confidence" => batch.manifold_confidence = Some(vec_of(&value)?),
            "cluster_probability" => batch.cluster_probability = Some(vec_of(&value)?),
            "router_entropy" => batch.router_entropy = Some(vec_of(&value)?),
            "expert_load_balance" => batch.expert_load_balance = Some(vec_of(&value)?),
            "sink_token_mass" => batch.sink_token_mass = Some(vec_of(&value)?),
            "top_k_positions" => batch.top_k_positions = Some(list_column(&value, &name)?),
            "top_k_scores" => batch.top_k_scores = Some(list_column(&value, &name)?),
            "capture_layer_ids" => batch.capture_layer_ids = Some(list_column(&value, &name)?),
            "top_expert_ids" => batch.top_expert_ids = Some(list_column(&value, &name)?),
            "invalid" => batch.invalid = Some(vec_of(&value)?),
            other => return Err(invalid_error(format!("unknown column {other:?}"))),
        }
    }
    Ok(())
}

/// A batch from the arguments of `append`.
fn batch(
    request_ids: &Bound<'_, PyAny>,
    steps: PyReadonlyArray1<'_, i64>,
    fingerprints: PyReadonlyArray2<'_, f32>,
    layout: u32,
    columns: &Bound<'_, PyDict>,
) -> PyResult<Batch> {
    let rows = steps.len();
    if fingerprints.shape()[1] != FINGERPRINT_DIM {
        return Err(shape_error(format!(
            "fingerprints must have {FINGERPRINT_DIM} columns, got {}",
            fingerprints.shape()[1]
        )));
    }
    let (request_ids, request_index) = request_columns(request_ids, rows)?;
    let mut batch = Batch {
        request_ids,
        request_index,
        steps: steps.as_array().to_vec(),
        fingerprints: fingerprints.as_array().iter().copied().collect(),
        layout: py(Layout::from_code(layout))?,
        ..Batch::default()
    };
    fill_columns(&mut batch, columns)?;
    Ok(batch)
}

/// `(values, valid)` numpy arrays of a nullable column.
fn nullable<'py, T: numpy::Element + Copy + Default>(
    py_: Python<'py>,
    col: Vec<Option<T>>,
) -> (Bound<'py, PyArray1<T>>, Bound<'py, PyArray1<bool>>) {
    let valid: Vec<bool> = col.iter().map(Option::is_some).collect();
    let values: Vec<T> = col.into_iter().map(Option::unwrap_or_default).collect();
    (values.into_pyarray(py_), valid.into_pyarray(py_))
}

fn blobs<'py>(py_: Python<'py>, col: Vec<Option<Vec<u8>>>) -> PyResult<Bound<'py, PyList>> {
    PyList::new(
        py_,
        col.into_iter()
            .map(|b| b.map(|b| PyBytes::new(py_, &b).into_any())),
    )
}

fn rows_to_dict<'py>(py_: Python<'py>, rows: Rows) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py_);
    d.set_item("id", rows.id.into_pyarray(py_))?;
    d.set_item("request_id", rows.request_id)?;
    d.set_item("step", rows.step.into_pyarray(py_))?;
    d.set_item("session_id", rows.session_id)?;
    d.set_item("token_id", nullable(py_, rows.token_id))?;
    d.set_item("token_text", rows.token_text)?;
    d.set_item("think_phase", nullable(py_, rows.think_phase))?;
    d.set_item("segment_idx", nullable(py_, rows.segment_idx))?;
    d.set_item(
        "fingerprint",
        to_rows(py_, rows.fingerprint, FINGERPRINT_DIM)?,
    )?;
    d.set_item("zone", nullable(py_, rows.zone))?;
    d.set_item(
        "manifold_confidence",
        nullable(py_, rows.manifold_confidence),
    )?;
    d.set_item("cluster_id", nullable(py_, rows.cluster_id))?;
    d.set_item(
        "cluster_probability",
        nullable(py_, rows.cluster_probability),
    )?;
    d.set_item("router_entropy", nullable(py_, rows.router_entropy))?;
    d.set_item(
        "expert_load_balance",
        nullable(py_, rows.expert_load_balance),
    )?;
    d.set_item("sink_token_mass", nullable(py_, rows.sink_token_mass))?;
    d.set_item("top_k_positions", blobs(py_, rows.top_k_positions)?)?;
    d.set_item("top_k_scores", blobs(py_, rows.top_k_scores)?)?;
    d.set_item("capture_layer_ids", blobs(py_, rows.capture_layer_ids)?)?;
    d.set_item("top_expert_ids", blobs(py_, rows.top_expert_ids)?)?;
    d.set_item("layout", rows.layout.into_pyarray(py_))?;
    d.set_item("model_id", rows.model_id)?;
    d.set_item("created_us", rows.created_us.into_pyarray(py_))?;
    d.set_item("invalid", rows.invalid.into_pyarray(py_))?;
    Ok(d)
}

fn to_sql_value(v: &Bound<'_, PyAny>) -> PyResult<SqlValue> {
    if v.is_none() {
        Ok(SqlValue::Null)
    } else if v.is_instance_of::<pyo3::types::PyBool>() {
        Ok(SqlValue::Integer(i64::from(v.extract::<bool>()?)))
    } else if let Ok(i) = v.extract::<i64>() {
        Ok(SqlValue::Integer(i))
    } else if let Ok(f) = v.extract::<f64>() {
        Ok(SqlValue::Real(f))
    } else if let Ok(s) = v.cast::<PyString>() {
        Ok(SqlValue::Text(s.to_str()?.to_owned()))
    } else if let Ok(b) = v.cast::<PyBytes>() {
        Ok(SqlValue::Blob(b.as_bytes().to_vec()))
    } else {
        Err(invalid_error(format!(
            "SQL parameters must be None, int, float, str or bytes; got {}",
            v.get_type().name()?
        )))
    }
}

fn from_sql_value(py_: Python<'_>, v: SqlValue) -> PyResult<Bound<'_, PyAny>> {
    Ok(match v {
        SqlValue::Null => py_.None().into_bound(py_),
        SqlValue::Integer(i) => i.into_pyobject(py_)?.into_any(),
        SqlValue::Real(f) => f.into_pyobject(py_)?.into_any(),
        SqlValue::Text(t) => PyString::new(py_, &t).into_any(),
        SqlValue::Blob(b) => PyBytes::new(py_, &b).into_any(),
    })
}

/// `(day, path, rows)` of one exported file.
type ExportedFile = (String, PathBuf, u64);

/// `(stored, duplicates, [(request_id, step), ...])`: what became of a tracked batch.
pub type Outcome = (u64, u64, Vec<(String, i64)>);

fn outcome(w: Written) -> Outcome {
    (w.stored, w.duplicates, w.first_duplicates)
}

/// What became of a batch appended with `append_tracked`, once committed.
#[pyclass(frozen, name = "Ticket", module = "attnfast._core")]
pub struct PyTicket {
    ticket: Ticket,
    result: OnceLock<attnfast_core::Result<Written>>,
}

impl PyTicket {
    pub fn new(ticket: Ticket) -> Self {
        Self {
            ticket,
            result: OnceLock::new(),
        }
    }
}

#[pymethods]
impl PyTicket {
    /// Waits (without the GIL) for the batch's commit; returns `(stored, duplicates,
    /// first duplicates)` or raises what stopped the batch.
    fn wait(&self, py_: Python<'_>) -> PyResult<Outcome> {
        let result = py_.detach(|| self.result.get_or_init(|| self.ticket.wait()).clone());
        py(result).map(outcome)
    }

    /// Whether the batch's outcome is known (committed or failed).
    fn done(&self) -> bool {
        if self.result.get().is_some() {
            return true;
        }
        match self.ticket.try_wait() {
            Some(r) => {
                let _ = self.result.set(r);
                true
            }
            None => false,
        }
    }

    #[getter]
    fn rows(&self) -> usize {
        self.ticket.rows()
    }
}

/// A fingerprint store (see `attnfast.FingerprintStore`, which wraps this).
#[pyclass(frozen, name = "Store", module = "attnfast._core")]
pub struct PyStore {
    pub(crate) inner: Store,
}

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (path, synchronous, busy_timeout_s, max_queued_rows, on_duplicate, init))]
    fn new(
        py_: Python<'_>,
        path: PathBuf,
        synchronous: &str,
        busy_timeout_s: f64,
        max_queued_rows: usize,
        on_duplicate: &str,
        init: bool,
    ) -> PyResult<Self> {
        if !(busy_timeout_s.is_finite() && busy_timeout_s >= 0.0) {
            return Err(invalid_error(format!(
                "busy_timeout must be a non-negative number of seconds, got {busy_timeout_s}"
            )));
        }
        if max_queued_rows == 0 {
            return Err(invalid_error("max_queued_rows must be at least 1"));
        }
        let opts = StoreOptions {
            synchronous: py(Synchronous::parse(synchronous))?,
            busy_timeout: Duration::from_secs_f64(busy_timeout_s),
            max_queued_rows,
            on_duplicate: py(DuplicatePolicy::parse(on_duplicate))?,
            init,
        };
        let inner = py(py_.detach(|| Store::open(&path, opts)))?;
        Ok(Self { inner })
    }

    /// Queues rows; returns how many. Blocks (without the GIL) while the queue is full.
    #[pyo3(signature = (request_ids, steps, fingerprints, layout, columns))]
    fn append(
        &self,
        py_: Python<'_>,
        request_ids: &Bound<'_, PyAny>,
        steps: PyReadonlyArray1<'_, i64>,
        fingerprints: PyReadonlyArray2<'_, f32>,
        layout: u32,
        columns: &Bound<'_, PyDict>,
    ) -> PyResult<usize> {
        let batch = batch(request_ids, steps, fingerprints, layout, columns)?;
        py(py_.detach(|| self.inner.append(batch)))
    }

    /// As `append`, returning a ticket for the batch's outcome.
    #[pyo3(signature = (request_ids, steps, fingerprints, layout, columns))]
    fn append_tracked(
        &self,
        py_: Python<'_>,
        request_ids: &Bound<'_, PyAny>,
        steps: PyReadonlyArray1<'_, i64>,
        fingerprints: PyReadonlyArray2<'_, f32>,
        layout: u32,
        columns: &Bound<'_, PyDict>,
    ) -> PyResult<PyTicket> {
        let batch = batch(request_ids, steps, fingerprints, layout, columns)?;
        py(py_.detach(|| self.inner.append_tracked(batch))).map(PyTicket::new)
    }

    fn flush(&self, py_: Python<'_>) -> PyResult<()> {
        py(py_.detach(|| self.inner.flush()))
    }

    fn close(&self, py_: Python<'_>) -> PyResult<()> {
        py(py_.detach(|| self.inner.close()))
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// `(rows converted from a seed database, rows quarantined, schema upgraded from)`.
    fn opened(&self) -> (u64, u64, Option<i64>) {
        let o = self.inner.opened();
        (o.migrated_rows, o.quarantined_rows, o.upgraded_from)
    }

    /// `(rows_written, duplicates_rejected, transactions, failed_rows, queued_rows)`.
    fn writer_stats(&self) -> (u64, u64, u64, u64, u64) {
        let s = self.inner.writer_stats();
        (
            s.rows_written,
            s.duplicates_rejected,
            s.transactions,
            s.failed_rows,
            s.queued_rows,
        )
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (since_us, until_us, request_id, zone, cluster_id, layout, limit, newest_first))]
    fn read<'py>(
        &self,
        py_: Python<'py>,
        since_us: Option<i64>,
        until_us: Option<i64>,
        request_id: Option<String>,
        zone: Option<u8>,
        cluster_id: Option<i64>,
        layout: Option<u32>,
        limit: Option<u64>,
        newest_first: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let q = Query {
            since_us,
            until_us,
            request_id,
            zone,
            cluster_id,
            layout,
            limit,
            newest_first,
        };
        let rows = py(py_.detach(|| self.inner.read(&q)))?;
        rows_to_dict(py_, rows)
    }

    /// Rows matching the filters (as `read`, without limit and order).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (since_us, until_us, request_id, zone, cluster_id, layout))]
    fn count(
        &self,
        py_: Python<'_>,
        since_us: Option<i64>,
        until_us: Option<i64>,
        request_id: Option<String>,
        zone: Option<u8>,
        cluster_id: Option<i64>,
        layout: Option<u32>,
    ) -> PyResult<u64> {
        let q = Query {
            since_us,
            until_us,
            request_id,
            zone,
            cluster_id,
            layout,
            ..Query::default()
        };
        py(py_.detach(|| self.inner.count(&q)))
    }

    /// The discovery job's writes in one transaction: `statements` as `(sql, rows of
    /// parameters)`, then the clusters of fingerprint rows. Returns the rows updated.
    fn write_discovery(
        &self,
        py_: Python<'_>,
        statements: &Bound<'_, PyAny>,
        ids: PyReadonlyArray1<'_, i64>,
        cluster_id: PyReadonlyArray1<'_, i32>,
        probability: PyReadonlyArray1<'_, f32>,
    ) -> PyResult<u64> {
        let mut steps = Vec::new();
        for item in statements.try_iter()? {
            let (sql, rows): (String, Bound<'_, PyAny>) = item?.extract()?;
            let rows = rows
                .try_iter()?
                .map(|row| {
                    row?.try_iter()?
                        .map(|v| to_sql_value(&v?))
                        .collect::<PyResult<Vec<_>>>()
                })
                .collect::<PyResult<Vec<_>>>()?;
            steps.push(Statement { sql, rows });
        }
        let columns = ClusterColumns {
            ids: ids
                .as_slice()
                .map_err(|_| shape_error("ids must be contiguous"))?,
            cluster_id: cluster_id
                .as_slice()
                .map_err(|_| shape_error("cluster_id must be contiguous"))?,
            probability: probability
                .as_slice()
                .map_err(|_| shape_error("probability must be contiguous"))?,
        };
        py(py_.detach(|| self.inner.write_discovery(&steps, &columns)))
    }

    /// One read-only statement; returns `(column names, rows as tuples)`.
    #[pyo3(signature = (sql, params))]
    fn sql<'py>(
        &self,
        py_: Python<'py>,
        sql: &str,
        params: &Bound<'py, PyAny>,
    ) -> PyResult<(Vec<String>, Bound<'py, PyList>)> {
        let params = params
            .try_iter()?
            .map(|p| to_sql_value(&p?))
            .collect::<PyResult<Vec<_>>>()?;
        let (names, rows) = py(py_.detach(|| self.inner.sql(sql, &params)))?;
        let out = PyList::empty(py_);
        for row in rows {
            let values = row
                .into_iter()
                .map(|v| from_sql_value(py_, v))
                .collect::<PyResult<Vec<_>>>()?;
            out.append(pyo3::types::PyTuple::new(py_, values)?)?;
        }
        Ok((names, out))
    }

    /// Parquet export; returns `(rows, [(day, path, rows), ...])`.
    #[pyo3(signature = (out_dir, since_us, until_us, overwrite, progress=None))]
    fn export_parquet(
        &self,
        py_: Python<'_>,
        out_dir: PathBuf,
        since_us: Option<i64>,
        until_us: Option<i64>,
        overwrite: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(u64, Vec<ExportedFile>)> {
        let q = Query {
            since_us,
            until_us,
            ..Query::default()
        };
        let report = py_.detach(|| {
            let mut report_progress = |rows: u64| {
                if let Some(cb) = &progress {
                    Python::attach(|py_| {
                        if let Err(e) = cb.call1(py_, (rows,)) {
                            e.write_unraisable(py_, None);
                        }
                    });
                }
            };
            self.inner
                .export_parquet(&out_dir, &q, overwrite, &mut report_progress)
        });
        let report = py(report)?;
        Ok((report.rows, report.files))
    }
}
