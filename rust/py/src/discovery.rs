//! `attnfast._core.Classifier`: a discovery run's online classifier (`attnfast-core`'s
//! `discovery`), shared by threads; every placement runs with the interpreter released.

use std::path::PathBuf;
use std::sync::Arc;

use attnfast_core::discovery::{Classifier, Projection, Sample, artifact};
use attnfast_core::{FINGERPRINT_DIM, Layout};
use numpy::PyUntypedArrayMethods;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;

use crate::error::{py, shape_error};
use crate::fingerprint::to_rows;

/// Columns of placements: x, y, cluster_id, probability.
type Placements<'py> = (
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<i32>>,
    Bound<'py, PyArray1<f32>>,
);

/// The values of a `(T, 20)` C-contiguous float32 array.
fn rows<'a>(fps: &'a PyReadonlyArray2<'_, f32>, what: &str) -> PyResult<&'a [f32]> {
    if fps.shape()[1] != FINGERPRINT_DIM {
        return Err(shape_error(format!(
            "{what} must be (T, {FINGERPRINT_DIM}), got shape {:?}",
            fps.shape()
        )));
    }
    fps.as_slice()
        .map_err(|_| shape_error(format!("{what} must be a C-contiguous float32 array")))
}

fn values<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| shape_error(format!("{what} must be a contiguous 1-D array")))
}

#[pyclass(name = "Classifier", module = "attnfast._core", frozen)]
pub struct PyClassifier {
    inner: Arc<Classifier>,
}

impl PyClassifier {
    /// The core classifier, for bindings that classify as they store (the message decoder).
    pub fn shared(&self) -> Arc<Classifier> {
        Arc::clone(&self.inner)
    }
}

#[pymethods]
impl PyClassifier {
    /// Builds a classifier from a fitted run: the scaler and PCA parameters and the sample.
    #[new]
    #[pyo3(signature = (layout, scaler_mean, scaler_scale, pca_mean, pca_components, fingerprints, x, y, cluster_id, probability, neighbours, search_leaves))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py_: Python<'_>,
        layout: &str,
        scaler_mean: Vec<f64>,
        scaler_scale: Vec<f64>,
        pca_mean: Vec<f64>,
        pca_components: PyReadonlyArray2<'_, f64>,
        fingerprints: PyReadonlyArray2<'_, f32>,
        x: PyReadonlyArray1<'_, f32>,
        y: PyReadonlyArray1<'_, f32>,
        cluster_id: PyReadonlyArray1<'_, i32>,
        probability: PyReadonlyArray1<'_, f32>,
        neighbours: usize,
        search_leaves: usize,
    ) -> PyResult<Self> {
        let layout = py(Layout::from_name(layout))?;
        let components = pca_components
            .as_slice()
            .map_err(|_| shape_error("pca_components must be a C-contiguous float64 array"))?;
        let projection = py(Projection::new(
            &scaler_mean,
            &scaler_scale,
            &pca_mean,
            components,
        ))?;
        let sample = Sample {
            fingerprints: rows(&fingerprints, "fingerprints")?.to_vec(),
            x: values(&x, "x")?.to_vec(),
            y: values(&y, "y")?.to_vec(),
            cluster_id: values(&cluster_id, "cluster_id")?.to_vec(),
            probability: values(&probability, "probability")?.to_vec(),
        };
        let inner =
            py(py_.detach(|| {
                Classifier::new(layout, projection, sample, neighbours, search_leaves)
            }))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Loads the classifier of a run folder (`model.json` and `sample.parquet`).
    #[staticmethod]
    fn load(py_: Python<'_>, folder: PathBuf) -> PyResult<Self> {
        let inner = py(py_.detach(|| artifact::load(&folder)))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The layout the run was fitted on.
    #[getter]
    fn layout(&self) -> &'static str {
        self.inner.layout().name()
    }

    /// PCA components kept (the dimensions of the neighbour search).
    #[getter]
    fn dims(&self) -> usize {
        self.inner.dims()
    }

    /// Sample points that vote on each placement.
    #[getter]
    fn neighbours(&self) -> usize {
        self.inner.neighbours()
    }

    /// Leaves of the index a search may visit.
    #[getter]
    fn search_leaves(&self) -> usize {
        self.inner.search_leaves()
    }

    /// Fingerprints in the sample.
    #[getter]
    fn sample_rows(&self) -> usize {
        self.inner.sample().len()
    }

    /// Projected coordinates `(T, dims)` of `(T, 20)` fingerprints.
    fn project<'py>(
        &self,
        py_: Python<'py>,
        fingerprints: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let fps = rows(&fingerprints, "fingerprints")?;
        let inner = Arc::clone(&self.inner);
        let out = py(py_.detach(|| inner.project(fps)))?;
        to_rows(py_, out, self.inner.dims())
    }

    /// Places `(T, 20)` fingerprints: `(x, y, cluster_id, probability)` columns.
    fn assign<'py>(
        &self,
        py_: Python<'py>,
        fingerprints: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<Placements<'py>> {
        let fps = rows(&fingerprints, "fingerprints")?;
        let inner = Arc::clone(&self.inner);
        let a = py(py_.detach(|| inner.assign(fps)))?;
        Ok((
            a.x.into_pyarray(py_),
            a.y.into_pyarray(py_),
            a.cluster_id.into_pyarray(py_),
            a.probability.into_pyarray(py_),
        ))
    }

    /// Places one fingerprint (20 float32 values): `(x, y, cluster_id, probability)`.
    fn assign_one(
        &self,
        py_: Python<'_>,
        fingerprint: PyReadonlyArray1<'_, f32>,
    ) -> PyResult<(f32, f32, i32, f32)> {
        let fp = values(&fingerprint, "fingerprint")?;
        let a = py(py_.detach(|| self.inner.assign_one(fp)))?;
        Ok((a.x, a.y, a.cluster_id, a.probability))
    }
}
