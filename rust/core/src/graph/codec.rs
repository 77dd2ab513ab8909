//! The attribution graph codec, format 1 (spec: docs/graph-format.md).
//!
//! A graph is a node dictionary (layer, position, component; sorted, unique) and edges between
//! nodes with a value. The blob is a fixed header, a chunk table, the dictionary as one zstd
//! frame, then the edges in bands of falling |val| (the first `FIRST_CHUNK` edges, then four
//! times as many in each next band), each its own zstd frame holding its edges sorted by
//! (target, source), delta-coded. Every frame and the header
//! carry a CRC-32; a reader refuses any blob that does not add up, and names what is wrong.

use half::f16;

use super::varint;
use crate::{CoreError, Result};

pub const MAGIC: &[u8; 8] = b"AFGRAPH1";
pub const FORMAT_VERSION: u8 = 1;
/// Edges in the first chunk: a top-k of up to this many decodes one frame.
pub const FIRST_CHUNK: usize = 4096;
/// Each chunk holds this many times the edges of the one before: small top-k read little, and
/// the big bands compress like one sorted list (a target's sources sit together).
pub const CHUNK_GROWTH: usize = 4;

/// `(start, end)` of each chunk of `n` edges sorted by falling |val|.
pub fn chunk_bounds(n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0usize, FIRST_CHUNK);
    while start < n {
        let end = n.min(start.saturating_add(size));
        out.push((start, end));
        start = end;
        size = size.saturating_mul(CHUNK_GROWTH);
    }
    out
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}
const HEADER_LEN: usize = 40;
const CHUNK_ENTRY_LEN: usize = 24;
/// The longest layer name (bytes).
pub const MAX_LAYER_NAME: usize = 255;

/// How edge values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    F32,
    F16,
}

impl ValueType {
    fn code(self) -> u8 {
        match self {
            ValueType::F32 => 1,
            ValueType::F16 => 2,
        }
    }

    fn width(self) -> usize {
        match self {
            ValueType::F32 => 4,
            ValueType::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ValueType::F32 => "float32",
            ValueType::F16 => "float16",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "float32" | "f32" => Ok(ValueType::F32),
            "float16" | "f16" => Ok(ValueType::F16),
            _ => Err(CoreError::Invalid(format!(
                "edge values must be 'float32' or 'float16', not {name:?}"
            ))),
        }
    }
}

/// A node: a component of a layer at a token position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Node {
    /// Index into the graph's layer names.
    pub layer: u16,
    pub position: u32,
    pub component: u32,
}

/// Edges as columns; `src` and `tgt` index the node dictionary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edges {
    pub src: Vec<u32>,
    pub tgt: Vec<u32>,
    pub val: Vec<f32>,
}

impl Edges {
    pub fn len(&self) -> usize {
        self.val.len()
    }

    pub fn is_empty(&self) -> bool {
        self.val.is_empty()
    }

    fn push(&mut self, s: u32, t: u32, v: f32) {
        self.src.push(s);
        self.tgt.push(t);
        self.val.push(v);
    }

    /// Sorts by falling |val|, ties by (target, source), so every order is reproducible.
    pub fn sort_by_magnitude(&mut self) {
        // The bits of a finite |val| order like the value; sorting packed rows by one integer
        // key is several times faster than a comparator over three columns.
        let mut rows: Vec<(u128, f32)> = (0..self.len())
            .map(|i| {
                let desc = u32::MAX - self.val[i].abs().to_bits();
                let key = (u128::from(desc) << 64)
                    | (u128::from(self.tgt[i]) << 32)
                    | u128::from(self.src[i]);
                (key, self.val[i])
            })
            .collect();
        crate::parallel::sort_unstable_by_key(&mut rows, |r| r.0);
        for (i, (key, v)) in rows.into_iter().enumerate() {
            self.tgt[i] = (key >> 32) as u32;
            self.src[i] = key as u32;
            self.val[i] = v;
        }
    }

    pub fn truncate(&mut self, n: usize) {
        self.src.truncate(n);
        self.tgt.truncate(n);
        self.val.truncate(n);
    }
}

/// A whole graph: the layer names (in display order), the nodes, the edges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub layers: Vec<String>,
    pub nodes: Vec<Node>,
    pub edges: Edges,
}

fn graph_err(msg: impl Into<String>) -> CoreError {
    CoreError::Graph(msg.into())
}

fn check_layers(layers: &[String]) -> Result<()> {
    if layers.len() > usize::from(u16::MAX) + 1 {
        return Err(graph_err(format!(
            "a graph holds at most 65536 layers, got {}",
            layers.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for name in layers {
        if name.is_empty() || name.len() > MAX_LAYER_NAME {
            return Err(graph_err(format!(
                "layer names must have 1 to {MAX_LAYER_NAME} bytes, got {name:?}"
            )));
        }
        if name.contains(':') || name.chars().any(char::is_whitespace) {
            return Err(graph_err(format!(
                "layer name {name:?} holds ':' or whitespace (keys are \"layer:index\")"
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(graph_err(format!("layer name {name:?} appears twice")));
        }
    }
    Ok(())
}

/// Encodes a graph. Nodes may come in any order (they are sorted, edges remapped); a node
/// repeated, an edge naming a node that is not there, an edge repeated, or a value that is not
/// finite (or overflows float16) is refused and nothing is written.
pub fn encode(graph: &Graph, values: ValueType, level: i32) -> Result<Vec<u8>> {
    check_layers(&graph.layers)?;
    let n_nodes = graph.nodes.len();
    if n_nodes > u32::MAX as usize {
        return Err(graph_err("a graph holds at most 2^32 - 1 nodes"));
    }
    let e = &graph.edges;
    if e.src.len() != e.val.len() || e.tgt.len() != e.val.len() {
        return Err(CoreError::Shape(format!(
            "edge columns differ in length: src {}, tgt {}, val {}",
            e.src.len(),
            e.tgt.len(),
            e.val.len()
        )));
    }
    for (i, n) in graph.nodes.iter().enumerate() {
        if usize::from(n.layer) >= graph.layers.len() {
            return Err(graph_err(format!(
                "node {i} names layer {} of {}",
                n.layer,
                graph.layers.len()
            )));
        }
    }
    // Sorted dictionary and where each given node went.
    let mut order: Vec<u32> = (0..n_nodes as u32).collect();
    order.sort_unstable_by_key(|&i| graph.nodes[i as usize]);
    let mut new_index = vec![0u32; n_nodes];
    for (rank, &i) in order.iter().enumerate() {
        new_index[i as usize] = rank as u32;
        if rank > 0 && graph.nodes[order[rank - 1] as usize] == graph.nodes[i as usize] {
            let n = graph.nodes[i as usize];
            return Err(graph_err(format!(
                "node {}:{}:{} appears twice",
                graph.layers[usize::from(n.layer)],
                n.position,
                n.component
            )));
        }
    }
    let nodes: Vec<Node> = order.iter().map(|&i| graph.nodes[i as usize]).collect();
    let mut edges = Edges::default();
    for k in 0..e.len() {
        let (s, t, v) = (e.src[k], e.tgt[k], e.val[k]);
        if s as usize >= n_nodes || t as usize >= n_nodes {
            return Err(graph_err(format!(
                "edge {k} joins nodes {s} and {t}; the graph has {n_nodes} nodes"
            )));
        }
        if !v.is_finite() {
            return Err(graph_err(format!("edge {k} has the value {v}")));
        }
        let stored = match values {
            ValueType::F32 => v,
            ValueType::F16 => {
                let h = f16::from_f32(v);
                if h.is_infinite() {
                    return Err(graph_err(format!(
                        "edge {k} has the value {v}, beyond float16; store float32 values"
                    )));
                }
                h.to_f32()
            }
        };
        edges.push(new_index[s as usize], new_index[t as usize], stored);
    }
    edges.sort_by_magnitude();
    let dictionary = compress(&dictionary_bytes(&graph.layers, &nodes), level)?;
    let mut table = Vec::new();
    let mut frames = Vec::new();
    let mut seen_pairs = std::collections::HashSet::with_capacity(edges.len());
    for (start, end) in chunk_bounds(edges.len()) {
        let mut idx: Vec<usize> = (start..end).collect();
        idx.sort_unstable_by_key(|&i| (edges.tgt[i], edges.src[i]));
        for &i in &idx {
            if !seen_pairs.insert((edges.src[i], edges.tgt[i])) {
                let (s, t) = (nodes[edges.src[i] as usize], nodes[edges.tgt[i] as usize]);
                return Err(graph_err(format!(
                    "the edge {} -> {} appears twice",
                    node_name(&graph.layers, s),
                    node_name(&graph.layers, t)
                )));
            }
        }
        let raw = chunk_bytes(&edges, &idx, values);
        let frame = compress(&raw, level)?;
        table.push(ChunkEntry {
            len: frame.len() as u32,
            n_edges: (end - start) as u32,
            max_abs: edges.val[start].abs(),
            min_abs: edges.val[end - 1].abs(),
            crc: crc32fast::hash(&frame),
            offset: 0,
        });
        frames.push(frame);
    }
    let mut out = Vec::with_capacity(
        HEADER_LEN + 4 + table.len() * CHUNK_ENTRY_LEN + dictionary.len() + frames.len() * 64,
    );
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(values.code());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(graph.layers.len() as u32).to_le_bytes());
    out.extend_from_slice(&(n_nodes as u32).to_le_bytes());
    out.extend_from_slice(&(edges.len() as u64).to_le_bytes());
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    out.extend_from_slice(&(dictionary.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&dictionary).to_le_bytes());
    for c in &table {
        out.extend_from_slice(&c.len.to_le_bytes());
        out.extend_from_slice(&c.n_edges.to_le_bytes());
        out.extend_from_slice(&c.max_abs.to_le_bytes());
        out.extend_from_slice(&c.min_abs.to_le_bytes());
        out.extend_from_slice(&c.crc.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
    }
    let header_crc = crc32fast::hash(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&dictionary);
    for f in &frames {
        out.extend_from_slice(f);
    }
    Ok(out)
}

/// `layer:position:component`, the seed's node name.
pub fn node_name(layers: &[String], n: Node) -> String {
    let layer = layers.get(usize::from(n.layer)).map_or("?", String::as_str);
    format!("{layer}:{}:{}", n.position, n.component)
}

fn compress(raw: &[u8], level: i32) -> Result<Vec<u8>> {
    zstd::bulk::compress(raw, level).map_err(|e| graph_err(format!("zstd: {e}")))
}

fn dictionary_bytes(layers: &[String], nodes: &[Node]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nodes.len() * 3);
    for l in layers {
        varint::put(&mut out, l.len() as u64);
        out.extend_from_slice(l.as_bytes());
    }
    let mut prev: Option<Node> = None;
    for &n in nodes {
        match prev {
            Some(p) if p.layer == n.layer && p.position == n.position => {
                varint::put(&mut out, 0);
                varint::put(&mut out, 0);
                varint::put(&mut out, u64::from(n.component - p.component));
            }
            Some(p) if p.layer == n.layer => {
                varint::put(&mut out, 0);
                varint::put(&mut out, u64::from(n.position - p.position));
                varint::put(&mut out, u64::from(n.component));
            }
            _ => {
                let base = prev.map_or(0, |p| p.layer);
                varint::put(&mut out, u64::from(n.layer - base));
                varint::put(&mut out, u64::from(n.position));
                varint::put(&mut out, u64::from(n.component));
            }
        }
        prev = Some(n);
    }
    out
}

fn chunk_bytes(edges: &Edges, idx: &[usize], values: ValueType) -> Vec<u8> {
    // Three streams, each compressing on its own statistics: target deltas, then source
    // codes, then the value byte planes.
    let mut out = Vec::with_capacity(idx.len() * (4 + values.width()));
    let mut sources = Vec::with_capacity(idx.len() * 2);
    let mut prev: Option<(u32, u32)> = None;
    // The first source of the previous target: neighbouring targets (the channels of one
    // layer at one position) mostly share their sources, so a new target's first source is
    // coded against it.
    let mut group_first = 0u32;
    for &i in idx {
        let (t, s) = (edges.tgt[i], edges.src[i]);
        match prev {
            Some((pt, ps)) if pt == t => {
                varint::put(&mut out, 0);
                varint::put(&mut sources, u64::from(s - ps));
            }
            Some((pt, _)) => {
                varint::put(&mut out, u64::from(t - pt));
                varint::put(&mut sources, zigzag(i64::from(s) - i64::from(group_first)));
                group_first = s;
            }
            None => {
                varint::put(&mut out, u64::from(t));
                varint::put(&mut sources, u64::from(s));
                group_first = s;
            }
        }
        prev = Some((t, s));
    }
    out.extend_from_slice(&sources);
    // Byte planes: all first bytes, then all second bytes, ...
    let width = values.width();
    let start = out.len();
    out.resize(start + idx.len() * width, 0);
    for (k, &i) in idx.iter().enumerate() {
        let v = edges.val[i];
        let bytes: [u8; 4] = match values {
            ValueType::F32 => v.to_le_bytes(),
            ValueType::F16 => {
                let b = f16::from_f32(v).to_le_bytes();
                [b[0], b[1], 0, 0]
            }
        };
        for (plane, &b) in bytes[..width].iter().enumerate() {
            out[start + plane * idx.len() + k] = b;
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct ChunkEntry {
    len: u32,
    n_edges: u32,
    max_abs: f32,
    min_abs: f32,
    crc: u32,
    offset: usize,
}

/// A decoded header and dictionary over the blob's bytes; chunks are decoded on demand.
#[derive(Debug, Clone)]
pub struct GraphReader {
    bytes: Vec<u8>,
    values: ValueType,
    layers: Vec<String>,
    nodes: Vec<Node>,
    n_edges: u64,
    chunks: Vec<ChunkEntry>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

thread_local! {
    /// One decompression context per thread: making one per frame costs more than decoding a
    /// small chunk.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// A frame's bytes, refused if the frame does not declare its size (ours always do), declares
/// more than `bound`, or does not decode to exactly that size.
fn decompress(frame: &[u8], bound: usize, what: &str) -> Result<Vec<u8>> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) => size,
        _ => {
            return Err(graph_err(format!(
                "{what} is not a zstd frame with its size"
            )));
        }
    };
    if size > bound as u64 {
        return Err(graph_err(format!("{what} holds more bytes than it can")));
    }
    let out = DECOMPRESSOR.with(|cell| -> std::io::Result<Vec<u8>> {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut()
            .expect("just made")
            .decompress(frame, size as usize)
    });
    match out {
        Ok(out) if out.len() as u64 == size => Ok(out),
        Ok(_) => Err(graph_err(format!("{what} is shorter than it declares"))),
        Err(e) => Err(graph_err(format!("{what} is not a zstd frame ({e})"))),
    }
}

impl GraphReader {
    /// Checks the header, the chunk table and the dictionary; the chunks are checked when read.
    pub fn open(bytes: Vec<u8>) -> Result<Self> {
        if bytes.len() < HEADER_LEN + 4 {
            return Err(graph_err(format!(
                "a graph blob has at least {} bytes, this one {}",
                HEADER_LEN + 4,
                bytes.len()
            )));
        }
        if &bytes[..8] != MAGIC {
            return Err(graph_err("not an attnfast graph blob (wrong magic)"));
        }
        if bytes[8] != FORMAT_VERSION {
            return Err(graph_err(format!(
                "graph format version {} (this attnfast reads {FORMAT_VERSION})",
                bytes[8]
            )));
        }
        let values = match bytes[9] {
            1 => ValueType::F32,
            2 => ValueType::F16,
            c => return Err(graph_err(format!("unknown value type {c}"))),
        };
        let n_layers = u32_at(&bytes, 12) as usize;
        let n_nodes = u32_at(&bytes, 16) as usize;
        let n_edges = u64::from_le_bytes(bytes[20..28].try_into().expect("8 bytes"));
        let n_chunks = u32_at(&bytes, 28) as usize;
        let dict_len = u32_at(&bytes, 32) as usize;
        let dict_crc = u32_at(&bytes, 36);
        let table_end = n_chunks
            .checked_mul(CHUNK_ENTRY_LEN)
            .and_then(|t| t.checked_add(HEADER_LEN))
            .filter(|&t| t + 4 <= bytes.len())
            .ok_or_else(|| graph_err("the chunk table runs past the end of the blob"))?;
        if crc32fast::hash(&bytes[..table_end]) != u32_at(&bytes, table_end) {
            return Err(graph_err(
                "the header checksum does not match (damaged blob)",
            ));
        }
        let dict_start = table_end + 4;
        let mut offset = dict_start
            .checked_add(dict_len)
            .filter(|&o| o <= bytes.len())
            .ok_or_else(|| graph_err("the node dictionary runs past the end of the blob"))?;
        let mut chunks = Vec::with_capacity(n_chunks);
        let mut total: u64 = 0;
        for i in 0..n_chunks {
            let at = HEADER_LEN + i * CHUNK_ENTRY_LEN;
            let c = ChunkEntry {
                len: u32_at(&bytes, at),
                n_edges: u32_at(&bytes, at + 4),
                max_abs: f32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4")),
                min_abs: f32::from_le_bytes(bytes[at + 12..at + 16].try_into().expect("4")),
                crc: u32_at(&bytes, at + 16),
                offset,
            };
            let well_formed = c.n_edges > 0
                && c.min_abs <= c.max_abs
                && chunks
                    .last()
                    .is_none_or(|p: &ChunkEntry| c.max_abs <= p.min_abs);
            if !well_formed {
                return Err(graph_err(format!(
                    "chunk {i}'s table entry is inconsistent"
                )));
            }
            offset = offset
                .checked_add(c.len as usize)
                .filter(|&o| o <= bytes.len())
                .ok_or_else(|| graph_err(format!("chunk {i} runs past the end of the blob")))?;
            total += u64::from(c.n_edges);
            chunks.push(c);
        }
        if offset != bytes.len() {
            return Err(graph_err(format!(
                "the blob has {} bytes after its last chunk",
                bytes.len() - offset
            )));
        }
        if total != n_edges {
            return Err(graph_err(format!(
                "the chunks hold {total} edges, the header says {n_edges}"
            )));
        }
        let frame = &bytes[dict_start..dict_start + dict_len];
        if crc32fast::hash(frame) != dict_crc {
            return Err(graph_err("the node dictionary's checksum does not match"));
        }
        let bound = n_layers
            .saturating_mul(MAX_LAYER_NAME + 2)
            .saturating_add(n_nodes.saturating_mul(15));
        let raw = decompress(frame, bound, "the node dictionary")?;
        let (layers, nodes) = read_dictionary(&raw, n_layers, n_nodes)?;
        Ok(Self {
            bytes,
            values,
            layers,
            nodes,
            n_edges,
            chunks,
        })
    }

    pub fn layers(&self) -> &[String] {
        &self.layers
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn n_edges(&self) -> u64 {
        self.n_edges
    }

    pub fn n_chunks(&self) -> usize {
        self.chunks.len()
    }

    pub fn values(&self) -> ValueType {
        self.values
    }

    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The dictionary index of a node, if the graph has it.
    pub fn node_index(&self, layer: &str, position: u32, component: u32) -> Option<u32> {
        let layer = self.layers.iter().position(|l| l == layer)? as u16;
        self.nodes
            .binary_search(&Node {
                layer,
                position,
                component,
            })
            .ok()
            .map(|i| i as u32)
    }

    /// The edges of chunk `i`.
    pub fn chunk_len(&self, i: usize) -> usize {
        self.chunks[i].n_edges as usize
    }

    /// The largest |val| of chunk `i` (chunks come in falling |val|).
    pub fn chunk_max_abs(&self, i: usize) -> f32 {
        self.chunks[i].max_abs
    }

    /// Decodes chunk `i`, its edges sorted by (target, source).
    pub fn chunk(&self, i: usize) -> Result<Edges> {
        let c = self.chunks[i];
        let what = format!("chunk {i}");
        let frame = &self.bytes[c.offset..c.offset + c.len as usize];
        if crc32fast::hash(frame) != c.crc {
            return Err(graph_err(format!(
                "{what}'s checksum does not match (damaged blob)"
            )));
        }
        let n = c.n_edges as usize;
        let width = self.values.width();
        let raw = decompress(frame, n.saturating_mul(20 + width), &what)?;
        // Every edge takes at least two bytes and its value: a count the frame cannot hold is
        // refused before anything is allocated for it.
        if raw.len() < n.saturating_mul(2 + width) {
            return Err(graph_err(format!(
                "{what} has {} bytes for {n} edges",
                raw.len()
            )));
        }
        let mut edges = Edges {
            src: Vec::with_capacity(n),
            tgt: Vec::with_capacity(n),
            val: Vec::with_capacity(n),
        };
        // The target deltas, then the source codes (see `chunk_bytes`).
        let mut at = 0usize;
        let mut deltas = Vec::with_capacity(n);
        for _ in 0..n {
            deltas.push(varint::get(&raw, &mut at, &what)?);
        }
        let mut prev: Option<(u64, u64)> = None;
        let mut group_first = 0i64;
        let n_nodes = self.nodes.len() as u64;
        for dt in deltas {
            let ds = varint::get(&raw, &mut at, &what)?;
            let (t, s) = match prev {
                None => {
                    group_first = ds.min(u64::from(u32::MAX)) as i64;
                    (dt, ds)
                }
                Some((pt, ps)) if dt == 0 => {
                    if ds == 0 {
                        return Err(graph_err(format!("{what} repeats an edge")));
                    }
                    (pt, ps.saturating_add(ds))
                }
                Some((pt, _)) => {
                    let s = group_first.saturating_add(unzigzag(ds));
                    if s < 0 {
                        return Err(graph_err(format!(
                            "{what} names a node beyond the dictionary"
                        )));
                    }
                    group_first = s.min(i64::from(u32::MAX));
                    (pt.saturating_add(dt), s as u64)
                }
            };
            if t >= n_nodes || s >= n_nodes {
                return Err(graph_err(format!(
                    "{what} names a node beyond the dictionary"
                )));
            }
            edges.tgt.push(t as u32);
            edges.src.push(s as u32);
            prev = Some((t, s));
        }
        if raw.len() != at + n * width {
            return Err(graph_err(format!(
                "{what} has {} bytes of values for {n} edges",
                raw.len().saturating_sub(at)
            )));
        }
        let planes = &raw[at..];
        for k in 0..n {
            let v = match self.values {
                ValueType::F32 => f32::from_le_bytes([
                    planes[k],
                    planes[n + k],
                    planes[2 * n + k],
                    planes[3 * n + k],
                ]),
                ValueType::F16 => f16::from_le_bytes([planes[k], planes[n + k]]).to_f32(),
            };
            let a = v.abs();
            if !v.is_finite() || a > c.max_abs || a < c.min_abs {
                return Err(graph_err(format!(
                    "{what} holds the value {v} outside its table entry's range"
                )));
            }
            edges.val.push(v);
        }
        Ok(edges)
    }

    /// Chunks `0..n`, each sorted by falling |val|, decoded in parallel. Chunks are bands of
    /// |val|, so their concatenation is in falling |val| too.
    pub fn sorted_chunks(&self, n: usize) -> Result<Vec<Edges>> {
        let n = n.min(self.chunks.len());
        let work: usize = (0..n).map(|i| self.chunk_len(i)).sum();
        crate::parallel::try_map(n, work, |i| {
            let mut c = self.chunk(i)?;
            c.sort_by_magnitude();
            Ok(c)
        })
    }

    /// Every edge, by falling |val|.
    pub fn all(&self) -> Result<Edges> {
        let mut out = Edges::default();
        for c in self.sorted_chunks(self.chunks.len())? {
            out.src.extend(c.src);
            out.tgt.extend(c.tgt);
            out.val.extend(c.val);
        }
        Ok(out)
    }

    /// The whole graph back.
    pub fn graph(&self) -> Result<Graph> {
        Ok(Graph {
            layers: self.layers.clone(),
            nodes: self.nodes.clone(),
            edges: self.all()?,
        })
    }

    /// Edges whose target (`into`) or source (`!into`) is `node`, by falling |val|. Every chunk
    /// is read; within one, a target's edges are found by binary search.
    pub fn edges_of(&self, node: u32, into: bool) -> Result<Edges> {
        let mut out = Edges::default();
        for i in 0..self.chunks.len() {
            let c = self.chunk(i)?;
            if into {
                let lo = c.tgt.partition_point(|&t| t < node);
                let hi = c.tgt.partition_point(|&t| t <= node);
                for k in lo..hi {
                    out.push(c.src[k], c.tgt[k], c.val[k]);
                }
            } else {
                for k in 0..c.len() {
                    if c.src[k] == node {
                        out.push(c.src[k], c.tgt[k], c.val[k]);
                    }
                }
            }
        }
        out.sort_by_magnitude();
        Ok(out)
    }
}

fn read_dictionary(
    raw: &[u8],
    n_layers: usize,
    n_nodes: usize,
) -> Result<(Vec<String>, Vec<Node>)> {
    let what = "the node dictionary";
    let mut at = 0usize;
    let mut layers = Vec::with_capacity(n_layers.min(65536));
    for _ in 0..n_layers {
        let len = varint::get(raw, &mut at, what)? as usize;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= raw.len())
            .ok_or_else(|| graph_err(format!("{what} ends inside a layer name")))?;
        let name = std::str::from_utf8(&raw[at..end])
            .map_err(|_| graph_err(format!("{what} holds a layer name that is not UTF-8")))?;
        layers.push(name.to_string());
        at = end;
    }
    check_layers(&layers)?;
    let mut nodes = Vec::with_capacity(n_nodes.min(raw.len()));
    let mut prev: Option<Node> = None;
    let narrow = |v: u64| u32::try_from(v).map_err(|_| graph_err(format!("{what} is damaged")));
    for _ in 0..n_nodes {
        let dl = varint::get(raw, &mut at, what)?;
        let p = varint::get(raw, &mut at, what)?;
        let c = varint::get(raw, &mut at, what)?;
        let n = match prev {
            Some(q) if dl == 0 && p == 0 => {
                if c == 0 {
                    return Err(graph_err(format!("{what} repeats a node")));
                }
                Node {
                    component: narrow(u64::from(q.component) + c)?,
                    ..q
                }
            }
            Some(q) if dl == 0 => Node {
                layer: q.layer,
                position: narrow(u64::from(q.position) + p)?,
                component: narrow(c)?,
            },
            _ => {
                let base = prev.map_or(0, |q| u64::from(q.layer));
                Node {
                    layer: u16::try_from(base + dl)
                        .map_err(|_| graph_err(format!("{what} is damaged")))?,
                    position: narrow(p)?,
                    component: narrow(c)?,
                }
            }
        };
        if usize::from(n.layer) >= layers.len() {
            return Err(graph_err(format!("{what} names a layer it does not have")));
        }
        nodes.push(n);
        prev = Some(n);
    }
    if at != raw.len() {
        return Err(graph_err(format!("{what} has bytes after its last node")));
    }
    Ok((layers, nodes))
}
