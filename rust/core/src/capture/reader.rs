//! The capture reader: random access by record ordinal, one decompressed chunk cached. A file
//! closed properly is opened from its index; a file without one (the writer crashed, or it
//! was cut short) is scanned chunk by chunk, and what is intact stays readable. Damage is
//! reported by chunk number and byte offset. The metadata header (the first chunk) must be
//! whole: a file whose model, mode and layers are unknown is an error, not empty fields.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use half::f16;
use serde_json::{Map, Value};

use super::chunk::{
    CHUNK_HEADER_LEN, CHUNK_MAGIC, ChunkHeader, ChunkKind, FILE_HEADER_LEN, FOOTER_LEN,
    check_file_header, decode_footer,
};
use super::record::{Record, StepHeader, get_planes};
use crate::error::{CoreError, Result};

/// A chunk that could not be read, found while opening or reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkProblem {
    pub chunk: usize,
    pub offset: u64,
    pub message: String,
}

#[derive(Debug, Clone, Copy)]
struct Chunk {
    offset: u64,
    header: ChunkHeader,
}

struct Entry {
    header: StepHeader,
    chunk: usize,
    /// Ordinal of the record inside its chunk.
    slot: usize,
}

/// A decompressed chunk and where each of its records starts.
struct Loaded {
    chunk: usize,
    raw: Vec<u8>,
    starts: Vec<usize>,
}

pub struct CaptureReader {
    file: File,
    path: String,
    meta: Map<String, Value>,
    chunks: Vec<Chunk>,
    /// Steps, then prompt rows (`Record as usize`).
    records: [Vec<Entry>; 2],
    problems: Vec<ChunkProblem>,
    indexed: bool,
    loaded: Option<Loaded>,
}

fn record_of(kind: ChunkKind) -> Option<Record> {
    match kind {
        ChunkKind::Steps => Some(Record::Step),
        ChunkKind::Prompt => Some(Record::Prompt),
        ChunkKind::Meta | ChunkKind::Index => None,
    }
}

impl CaptureReader {
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CoreError::Missing(format!("no such capture file: {shown}"))
            } else {
                CoreError::Capture(format!("cannot open {shown}: {e}"))
            }
        })?;
        let io = |e: std::io::Error| CoreError::Capture(format!("cannot read {shown}: {e}"));
        let len = file.metadata().map_err(io)?.len();
        let mut head = [0u8; FILE_HEADER_LEN];
        if len < FILE_HEADER_LEN as u64 {
            return Err(CoreError::Capture(format!(
                "{shown} is not an attnfast capture file ({len} bytes, shorter than its header)"
            )));
        }
        file.read_exact_at(&mut head, 0).map_err(io)?;
        check_file_header(&head).map_err(|e| CoreError::Capture(format!("{shown}: {e}")))?;
        let mut r = Self {
            file,
            path: shown,
            meta: Map::new(),
            chunks: Vec::new(),
            records: [Vec::new(), Vec::new()],
            problems: Vec::new(),
            indexed: false,
            loaded: None,
        };
        if !r.open_indexed(len)? {
            r.scan(len)?;
        }
        r.check_metadata()?;
        Ok(r)
    }

    fn io(&self, e: std::io::Error) -> CoreError {
        CoreError::Capture(format!("cannot read {}: {e}", self.path))
    }

    /// The first chunk, right after the file header, is the metadata header; it must be
    /// there and whole.
    fn check_metadata(&self) -> Result<()> {
        let first = self.chunks.first();
        let at_start = first.is_some_and(|c| c.offset == FILE_HEADER_LEN as u64);
        let damage = self
            .problems
            .iter()
            .find(|p| p.offset == FILE_HEADER_LEN as u64);
        if let Some(p) = damage {
            let detail = p
                .message
                .rsplit("is damaged: ")
                .next()
                .unwrap_or(&p.message);
            return Err(CoreError::Capture(format!(
                "{}: its metadata header (chunk 0, byte {FILE_HEADER_LEN}) is damaged: {detail}",
                self.path
            )));
        }
        if !at_start || first.is_some_and(|c| c.header.kind != ChunkKind::Meta) {
            return Err(CoreError::Capture(format!(
                "{}: it has no metadata header at byte {FILE_HEADER_LEN}",
                self.path
            )));
        }
        Ok(())
    }

    pub fn meta(&self) -> &Map<String, Value> {
        &self.meta
    }

    pub fn problems(&self) -> &[ChunkProblem] {
        &self.problems
    }

    /// Whether the file was opened from its index (closed properly).
    pub fn indexed(&self) -> bool {
        self.indexed
    }

    /// Steps in the file.
    pub fn len(&self) -> usize {
        self.records[Record::Step as usize].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records of a kind in the file.
    pub fn count(&self, kind: Record) -> usize {
        self.records[kind as usize].len()
    }

    fn entry(&self, kind: Record, i: usize) -> Result<&Entry> {
        let all = &self.records[kind as usize];
        all.get(i).ok_or_else(|| {
            let what = match kind {
                Record::Step => "step",
                Record::Prompt => "prompt row",
            };
            CoreError::Invalid(format!(
                "{what} index {i} is out of range (the capture has {} readable {what}s)",
                all.len()
            ))
        })
    }

    pub fn header(&self, i: usize) -> Result<&StepHeader> {
        self.record_header(Record::Step, i)
    }

    pub fn record_header(&self, kind: Record, i: usize) -> Result<&StepHeader> {
        self.entry(kind, i).map(|e| &e.header)
    }

    pub fn headers(&self) -> impl Iterator<Item = &StepHeader> {
        self.record_headers(Record::Step)
    }

    pub fn record_headers(&self, kind: Record) -> impl Iterator<Item = &StepHeader> {
        self.records[kind as usize].iter().map(|s| &s.header)
    }

    /// The attention of step `i` (by position in the file), as float32.
    pub fn read(&mut self, i: usize, out: &mut Vec<f32>) -> Result<()> {
        self.read_record(Record::Step, i, out)
    }

    /// The attention of record `i` of a kind, as float32.
    pub fn read_record(&mut self, kind: Record, i: usize, out: &mut Vec<f32>) -> Result<()> {
        let (chunk, slot, n) = {
            let e = self.entry(kind, i)?;
            (e.chunk, e.slot, e.header.values())
        };
        self.load(chunk)?;
        let loaded = self
            .loaded
            .as_ref()
            .ok_or_else(|| CoreError::Capture("no chunk".into()))?;
        let start = *loaded
            .starts
            .get(slot)
            .ok_or_else(|| self.damage(chunk, "it holds fewer steps than its header says"))?;
        let (_, used) =
            StepHeader::decode(&loaded.raw[start..]).map_err(|m| self.damage(chunk, &m))?;
        let mut half = vec![f16::ZERO; n];
        get_planes(&loaded.raw[start + used..], n, &mut half)
            .map_err(|m| self.damage(chunk, &m))?;
        out.clear();
        out.extend(half.iter().map(|v| v.to_f32()));
        Ok(())
    }

    /// Reads and checks every chunk; returns the problems found (empty when the file is whole).
    pub fn verify(&mut self) -> Vec<ChunkProblem> {
        let mut found = self.problems.clone();
        for i in 0..self.chunks.len() {
            if let Err(e) = self.payload(i) {
                found.push(ChunkProblem {
                    chunk: i,
                    offset: self.chunks[i].offset,
                    message: e.to_string(),
                });
            }
        }
        found
    }

    fn damage(&self, chunk: usize, what: &str) -> CoreError {
        let offset = self.chunks.get(chunk).map(|c| c.offset).unwrap_or(0);
        CoreError::Capture(format!(
            "{}: chunk {chunk} (byte {offset}) is damaged: {what}",
            self.path
        ))
    }

    fn load(&mut self, chunk: usize) -> Result<()> {
        if self.loaded.as_ref().is_some_and(|l| l.chunk == chunk) {
            return Ok(());
        }
        let raw = self.payload(chunk)?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < raw.len() {
            let (h, used) = StepHeader::decode(&raw[at..]).map_err(|m| self.damage(chunk, &m))?;
            starts.push(at);
            at += used + 2 * h.values();
        }
        self.loaded = Some(Loaded { chunk, raw, starts });
        Ok(())
    }

    /// Reads, checks and decompresses a chunk's payload.
    fn payload(&self, chunk: usize) -> Result<Vec<u8>> {
        let c = self.chunks[chunk];
        let mut stored = vec![0u8; c.header.stored_len as usize];
        self.file
            .read_exact_at(&mut stored, c.offset + CHUNK_HEADER_LEN as u64)
            .map_err(|e| self.damage(chunk, &format!("cannot read its payload ({e})")))?;
        if crc32fast::hash(&stored) != c.header.payload_crc {
            return Err(self.damage(chunk, "its payload failed its checksum"));
        }
        let raw = zstd::bulk::decompress(&stored, c.header.raw_len as usize)
            .map_err(|e| self.damage(chunk, &format!("zstd: {e}")))?;
        if raw.len() != c.header.raw_len as usize {
            return Err(self.damage(chunk, "it decompressed to the wrong length"));
        }
        Ok(raw)
    }

    fn read_header(&self, offset: u64, len: u64) -> std::result::Result<ChunkHeader, String> {
        if offset + CHUNK_HEADER_LEN as u64 > len {
            return Err(format!(
                "its header is truncated ({} bytes left)",
                len - offset
            ));
        }
        let mut h = [0u8; CHUNK_HEADER_LEN];
        self.file
            .read_exact_at(&mut h, offset)
            .map_err(|e| e.to_string())?;
        let header = ChunkHeader::decode(&h)?;
        let end = offset + CHUNK_HEADER_LEN as u64 + header.stored_len as u64;
        if end > len {
            return Err(format!(
                "it is truncated (its payload needs {} bytes, {} are left)",
                header.stored_len,
                len - offset - CHUNK_HEADER_LEN as u64
            ));
        }
        Ok(header)
    }

    /// Merges a metadata chunk's JSON object; a chunk that is not one is a problem.
    fn merge_meta(&mut self, chunk: usize) {
        let parsed =
            self.payload(chunk)
                .and_then(|raw| match serde_json::from_slice::<Value>(&raw) {
                    Ok(Value::Object(m)) => Ok(m),
                    _ => Err(self.damage(chunk, "its metadata is not a JSON object")),
                });
        match parsed {
            Ok(m) => self.meta.extend(m),
            Err(e) => self.problems.push(ChunkProblem {
                chunk,
                offset: self.chunks[chunk].offset,
                message: e.to_string(),
            }),
        }
    }

    /// Opens from the footer and index; false when there is none or it is damaged.
    fn open_indexed(&mut self, len: u64) -> Result<bool> {
        if len < (FILE_HEADER_LEN + FOOTER_LEN) as u64 {
            return Ok(false);
        }
        let mut tail = [0u8; FOOTER_LEN];
        self.file
            .read_exact_at(&mut tail, len - FOOTER_LEN as u64)
            .map_err(|e| self.io(e))?;
        let Some(index_at) = decode_footer(&tail) else {
            return Ok(false);
        };
        let body = len - FOOTER_LEN as u64;
        let Ok(header) = self.read_header(index_at, body) else {
            return Ok(false);
        };
        if header.kind != ChunkKind::Index {
            return Ok(false);
        }
        self.chunks = vec![Chunk {
            offset: index_at,
            header,
        }];
        let Ok(index) = self.payload(0) else {
            self.chunks.clear();
            return Ok(false);
        };
        let Some((locations, tables)) = parse_index(&index) else {
            self.chunks.clear();
            return Ok(false);
        };
        self.chunks.clear();
        for (offset, first, count) in locations {
            match self.read_header(offset, body) {
                Ok(h) if h.first_step == first && h.step_count == count => {
                    self.chunks.push(Chunk { offset, header: h })
                }
                // The index disagrees with the file: trust nothing in it and scan.
                _ => return Ok(self.forget()),
            }
        }
        for i in 0..self.chunks.len() {
            if self.chunks[i].header.kind == ChunkKind::Meta {
                self.merge_meta(i);
            }
        }
        for (kind, headers) in [Record::Step, Record::Prompt].into_iter().zip(tables) {
            let mut chunk = 0;
            for (ordinal, h) in headers.into_iter().enumerate() {
                let ordinal = ordinal as u32;
                while chunk < self.chunks.len() && {
                    let c = &self.chunks[chunk].header;
                    record_of(c.kind) != Some(kind) || ordinal >= c.first_step + c.step_count
                } {
                    chunk += 1;
                }
                if chunk == self.chunks.len() {
                    return Ok(self.forget());
                }
                let slot = (ordinal - self.chunks[chunk].header.first_step) as usize;
                self.records[kind as usize].push(Entry {
                    header: h,
                    chunk,
                    slot,
                });
            }
        }
        self.indexed = true;
        Ok(true)
    }

    /// Drops what an index said, for a scan; returns false.
    fn forget(&mut self) -> bool {
        self.chunks.clear();
        self.records = [Vec::new(), Vec::new()];
        self.problems.clear();
        self.meta.clear();
        false
    }

    /// Walks the chunks from the start, keeping every intact one. After a damaged header it
    /// looks for the next chunk magic whose header checks out.
    fn scan(&mut self, len: u64) -> Result<()> {
        let mut offset = FILE_HEADER_LEN as u64;
        while offset < len {
            let chunk = self.chunks.len();
            let header = match self.read_header(offset, len) {
                Ok(h) => h,
                Err(message) => {
                    self.problems.push(ChunkProblem {
                        chunk,
                        offset,
                        message,
                    });
                    match self.resync(offset + 1, len)? {
                        Some(next) => {
                            offset = next;
                            continue;
                        }
                        None => break,
                    }
                }
            };
            self.chunks.push(Chunk { offset, header });
            offset += (CHUNK_HEADER_LEN + header.stored_len as usize) as u64;
            match header.kind {
                ChunkKind::Index => {
                    self.chunks.pop();
                    // The footer that follows an index is not a chunk.
                    offset += FOOTER_LEN as u64;
                }
                ChunkKind::Meta => self.merge_meta(chunk),
                ChunkKind::Steps | ChunkKind::Prompt => self.scan_records(chunk),
            }
        }
        Ok(())
    }

    fn scan_records(&mut self, chunk: usize) {
        let kind = record_of(self.chunks[chunk].header.kind).expect("a record chunk");
        let raw = match self.payload(chunk) {
            Ok(raw) => raw,
            Err(e) => {
                self.problems.push(ChunkProblem {
                    chunk,
                    offset: self.chunks[chunk].offset,
                    message: e.to_string(),
                });
                return;
            }
        };
        let (mut at, mut slot) = (0, 0);
        while at < raw.len() {
            match StepHeader::decode(&raw[at..]) {
                Ok((h, used)) => {
                    at += used + 2 * h.values();
                    self.records[kind as usize].push(Entry {
                        header: h,
                        chunk,
                        slot,
                    });
                    slot += 1;
                }
                Err(m) => {
                    self.problems.push(ChunkProblem {
                        chunk,
                        offset: self.chunks[chunk].offset,
                        message: m,
                    });
                    break;
                }
            }
        }
    }

    fn resync(&self, from: u64, len: u64) -> Result<Option<u64>> {
        let mut buf = vec![0u8; (len - from.min(len)) as usize];
        self.file
            .read_exact_at(&mut buf, from)
            .map_err(|e| self.io(e))?;
        let mut at = 0;
        while let Some(p) = buf[at..].windows(4).position(|w| w == CHUNK_MAGIC) {
            let offset = from + (at + p) as u64;
            if self.read_header(offset, len).is_ok() {
                return Ok(Some(offset));
            }
            at += p + 1;
        }
        Ok(None)
    }
}

type Locations = Vec<(u64, u32, u32)>;

/// The index: chunk locations, step headers, and prompt-row headers (absent in files
/// without prompt rows).
fn parse_index(b: &[u8]) -> Option<(Locations, [Vec<StepHeader>; 2])> {
    let u32_at = |i: usize| Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?));
    let n = u32_at(0)? as usize;
    let mut at = 4;
    let mut locations = Vec::with_capacity(n.min(b.len() / 20));
    for _ in 0..n {
        let offset = u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?);
        locations.push((offset, u32_at(at + 12)?, u32_at(at + 16)?));
        at += 20;
    }
    let mut tables: [Vec<StepHeader>; 2] = [Vec::new(), Vec::new()];
    for (i, table) in tables.iter_mut().enumerate() {
        if i == 1 && at == b.len() {
            break;
        }
        let count = u32_at(at)? as usize;
        at += 4;
        table.reserve(count.min(b.len() / 40));
        for _ in 0..count {
            let (h, used) = StepHeader::decode(b.get(at..)?).ok()?;
            table.push(h);
            at += used;
        }
    }
    Some((locations, tables))
}
