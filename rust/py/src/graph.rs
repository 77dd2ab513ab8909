//! `attnfast._core` graph bindings: the edge codec (`encode_graph`, `GraphBlob`), the seed's
//! pairs (`seed_pairs_graph`) and the inverted index (`ComponentIndex`). Columns cross as numpy
//! arrays; decoding and queries run with the interpreter released.

use std::sync::Mutex;

use attnfast_core::graph::serve::{Selection, select};
use attnfast_core::graph::{ComponentIndex, Edges, Graph, GraphReader, Mode, Node, ValueType};
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::error::{invalid_error, py, shape_error};

type EdgeColumns<'py> = (
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray1<f32>>,
);
type NodeColumns<'py> = (
    Bound<'py, PyArray1<u16>>,
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray1<u32>>,
);

fn slice<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| shape_error(format!("{what} must be a contiguous 1-D array")))
}

fn edge_columns<'py>(py_: Python<'py>, e: Edges) -> EdgeColumns<'py> {
    (
        e.src.into_pyarray(py_),
        e.tgt.into_pyarray(py_),
        e.val.into_pyarray(py_),
    )
}

/// Encodes a graph given as columns: nodes (layer index, position, component) and edges (source
/// and target node indices, value). Nodes may be in any order; the blob's dictionary is sorted.
#[pyfunction]
// zstd level 9: a graph is written once and read often; against level 3 it is 1-3% smaller
// for 25 ms more per 260k edges, and decodes as fast.
#[pyo3(signature = (layers, layer, position, component, src, tgt, val, values = "float32", level = 9))]
#[allow(clippy::too_many_arguments)]
pub fn encode_graph<'py>(
    py_: Python<'py>,
    layers: Vec<String>,
    layer: PyReadonlyArray1<'py, u16>,
    position: PyReadonlyArray1<'py, u32>,
    component: PyReadonlyArray1<'py, u32>,
    src: PyReadonlyArray1<'py, u32>,
    tgt: PyReadonlyArray1<'py, u32>,
    val: PyReadonlyArray1<'py, f32>,
    values: &str,
    level: i32,
) -> PyResult<Bound<'py, PyBytes>> {
    let values = py(ValueType::from_name(values))?;
    let (l, p, c) = (
        slice(&layer, "layer")?,
        slice(&position, "position")?,
        slice(&component, "component")?,
    );
    if l.len() != p.len() || l.len() != c.len() {
        return Err(shape_error(format!(
            "node columns differ in length: layer {}, position {}, component {}",
            l.len(),
            p.len(),
            c.len()
        )));
    }
    let graph = Graph {
        layers,
        nodes: (0..l.len())
            .map(|i| Node {
                layer: l[i],
                position: p[i],
                component: c[i],
            })
            .collect(),
        edges: Edges {
            src: slice(&src, "src")?.to_vec(),
            tgt: slice(&tgt, "tgt")?.to_vec(),
            val: slice(&val, "val")?.to_vec(),
        },
    };
    let blob = py(py_.detach(|| attnfast_core::graph::encode(&graph, values, level)))?;
    Ok(PyBytes::new(py_, &blob))
}

/// The graph of the seed's pairs JSON (un-gzipped): `(layers, layer, position, component, src,
/// tgt, val)`, ready for `encode_graph`.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn seed_pairs_graph<'py>(
    py_: Python<'py>,
    json: &[u8],
) -> PyResult<(Vec<String>, NodeColumns<'py>, EdgeColumns<'py>)> {
    let g = py(py_.detach(|| attnfast_core::graph::seed::from_pairs_json(json)))?;
    let nodes = node_columns(py_, &g.nodes);
    Ok((g.layers, nodes, edge_columns(py_, g.edges)))
}

fn node_columns<'py>(py_: Python<'py>, nodes: &[Node]) -> NodeColumns<'py> {
    (
        nodes
            .iter()
            .map(|n| n.layer)
            .collect::<Vec<_>>()
            .into_pyarray(py_),
        nodes
            .iter()
            .map(|n| n.position)
            .collect::<Vec<_>>()
            .into_pyarray(py_),
        nodes
            .iter()
            .map(|n| n.component)
            .collect::<Vec<_>>()
            .into_pyarray(py_),
    )
}

/// Layer names in display order: `wte`, the blocks (the seed's parts in order), others, `output`.
#[pyfunction]
pub fn order_layers(names: Vec<String>) -> Vec<String> {
    attnfast_core::graph::layers::ordered(names)
}

/// A decoded graph blob: header and node dictionary read, edge chunks decoded per query.
#[pyclass(name = "GraphBlob", module = "attnfast._core", frozen)]
pub struct PyGraphBlob {
    inner: GraphReader,
}

#[pymethods]
impl PyGraphBlob {
    #[new]
    fn new(py_: Python<'_>, data: Vec<u8>) -> PyResult<Self> {
        let inner = py(py_.detach(|| GraphReader::open(data)))?;
        Ok(Self { inner })
    }

    #[getter]
    fn layers(&self) -> Vec<String> {
        self.inner.layers().to_vec()
    }

    #[getter]
    fn n_nodes(&self) -> usize {
        self.inner.nodes().len()
    }

    #[getter]
    fn n_edges(&self) -> u64 {
        self.inner.n_edges()
    }

    #[getter]
    fn n_chunks(&self) -> usize {
        self.inner.n_chunks()
    }

    #[getter]
    fn values(&self) -> &'static str {
        self.inner.values().name()
    }

    #[getter]
    fn byte_len(&self) -> usize {
        self.inner.byte_len()
    }

    /// Node columns `(layer, position, component)` in dictionary order.
    fn nodes<'py>(&self, py_: Python<'py>) -> NodeColumns<'py> {
        node_columns(py_, self.inner.nodes())
    }

    /// The dictionary index of a node, or None.
    fn node_index(&self, layer: &str, position: u32, component: u32) -> Option<u32> {
        self.inner.node_index(layer, position, component)
    }

    /// Edges `(src, tgt, val)` by falling |val|: the top `top_k` (all when None) at or above
    /// `min_abs`, between nodes whose `keep` entry is true, normalised by target if asked.
    #[pyo3(signature = (top_k = None, min_abs = 0.0, keep = None, normalize = false))]
    fn select<'py>(
        &self,
        py_: Python<'py>,
        top_k: Option<usize>,
        min_abs: f32,
        keep: Option<PyReadonlyArray1<'py, bool>>,
        normalize: bool,
    ) -> PyResult<EdgeColumns<'py>> {
        let keep = match &keep {
            Some(k) => Some(slice(k, "keep")?),
            None => None,
        };
        if !min_abs.is_finite() || min_abs < 0.0 {
            return Err(invalid_error(format!(
                "the threshold must be a finite number >= 0, got {min_abs}"
            )));
        }
        let sel = Selection {
            top_k,
            min_abs,
            keep,
            normalize,
        };
        let e = py(py_.detach(|| select(&self.inner, &sel)))?;
        Ok(edge_columns(py_, e))
    }

    /// The edges into (`into=True`) or out of a node, by falling |val|.
    fn edges_of<'py>(&self, py_: Python<'py>, node: u32, into: bool) -> PyResult<EdgeColumns<'py>> {
        if node as usize >= self.inner.nodes().len() {
            return Err(invalid_error(format!(
                "node {node} is beyond the graph's {} nodes",
                self.inner.nodes().len()
            )));
        }
        let e = py(py_.detach(|| self.inner.edges_of(node, into)))?;
        Ok(edge_columns(py_, e))
    }
}

/// The inverted index of component keys over prompts (roaring bitmaps); thread-safe.
#[pyclass(name = "ComponentIndex", module = "attnfast._core", frozen)]
pub struct PyComponentIndex {
    inner: Mutex<ComponentIndex>,
}

impl PyComponentIndex {
    fn with<T>(&self, f: impl FnOnce(&mut ComponentIndex) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

#[pymethods]
impl PyComponentIndex {
    #[new]
    fn new() -> Self {
        Self {
            inner: Mutex::new(ComponentIndex::new()),
        }
    }

    /// Adds `(prompt, key)` rows.
    fn add(
        &self,
        py_: Python<'_>,
        prompts: PyReadonlyArray1<'_, i64>,
        keys: Vec<String>,
    ) -> PyResult<()> {
        let prompts = slice(&prompts, "prompts")?;
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        py(py_.detach(|| self.with(|i| i.add(prompts, &keys))))
    }

    /// Adds one key's prompts given as comma-separated ids (SQLite's `group_concat`).
    fn add_concatenated(&self, py_: Python<'_>, key: &str, ids: &str) -> PyResult<()> {
        py(py_.detach(|| self.with(|i| i.add_concatenated(key, ids))))
    }

    /// Replaces a key's bitmap with a persisted one.
    fn load(&self, key: &str, bitmap: &[u8]) -> PyResult<()> {
        py(self.with(|i| i.load(key, bitmap)))
    }

    /// `[(key, bitmap bytes)]` of the keys changed since the last call.
    fn take_dirty<'py>(&self, py_: Python<'py>) -> Vec<(String, Bound<'py, PyBytes>)> {
        let dirty = py_.detach(|| self.with(|i| i.take_dirty()));
        dirty
            .into_iter()
            .map(|(k, b)| (k, PyBytes::new(py_, &b)))
            .collect()
    }

    #[getter]
    fn dirty_count(&self) -> usize {
        self.with(|i| i.dirty_count())
    }

    /// Distinct `(prompt, key)` rows held.
    #[getter]
    fn rows(&self) -> u64 {
        self.with(|i| i.rows())
    }

    /// Keys active on at least one prompt.
    #[getter]
    fn key_count(&self) -> usize {
        self.with(|i| i.key_count())
    }

    fn contains(&self, key: &str) -> bool {
        self.with(|i| i.contains(key))
    }

    /// The prompts of one key, ascending.
    fn prompts_of<'py>(&self, py_: Python<'py>, key: &str) -> Bound<'py, PyArray1<u32>> {
        let b = self.with(|i| i.prompts_of(key));
        b.iter().collect::<Vec<u32>>().into_pyarray(py_)
    }

    /// Prompts (ascending) matching `include` by `mode` ("all" or "any"), minus `exclude`.
    #[pyo3(signature = (include, mode = "all", exclude = Vec::new()))]
    fn query<'py>(
        &self,
        py_: Python<'py>,
        include: Vec<String>,
        mode: &str,
        exclude: Vec<String>,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let mode = py(Mode::from_name(mode))?;
        let inc: Vec<&str> = include.iter().map(String::as_str).collect();
        let exc: Vec<&str> = exclude.iter().map(String::as_str).collect();
        let ids: Vec<u32> =
            py_.detach(|| self.with(|i| i.query(&inc, mode, &exc).iter().collect()));
        Ok(ids.into_pyarray(py_))
    }
}
