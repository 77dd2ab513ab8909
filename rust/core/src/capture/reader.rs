//! The capture reader: random access by step ordinal, one decompressed chunk cached. A file
//! closed properly is opened from its index; a file without one (the writer crashed, or it
//! was cut short) is scanned chunk by chunk, and what is intact stays readable. Damage is
//! reported by chunk number and byte offset.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use half::f16;
use serde_json::{Map, Value};

use super::chunk::{
    CHUNK_HEADER_LEN, CHUNK_MAGIC, ChunkHeader, ChunkKind, FILE_HEADER_LEN, FOOTER_LEN,
    check_file_header, decode_footer,
};
use super::record::{StepHeader, get_planes};
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

struct Step {
    header: StepHeader,
    chunk: usize,
    /// Ordinal of the step inside its chunk.
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
    steps: Vec<Step>,
    problems: Vec<ChunkProblem>,
    indexed: bool,
    loaded: Option<Loaded>,
}

impl CaptureReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .map_err(|e| CoreError::Capture(format!("cannot open {}: {e}", path.display())))?;
        let len = file.metadata()?.len();
        let mut head = [0u8; FILE_HEADER_LEN];
        if len < FILE_HEADER_LEN as u64 {
            return Err(CoreError::Capture(format!(
                "{} is not an attnfast capture file ({len} bytes, shorter than its header)",
                path.display()
            )));
        }
        file.read_exact_at(&mut head, 0)?;
        check_file_header(&head)
            .map_err(|e| CoreError::Capture(format!("{}: {e}", path.display())))?;
        let mut r = Self {
            file,
            path: path.display().to_string(),
            meta: Map::new(),
            chunks: Vec::new(),
            steps: Vec::new(),
            problems: Vec::new(),
            indexed: false,
            loaded: None,
        };
        if !r.open_indexed(len)? {
            r.scan(len)?;
        }
        Ok(r)
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

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn header(&self, i: usize) -> Result<&StepHeader> {
        self.steps.get(i).map(|s| &s.header).ok_or_else(|| {
            CoreError::Invalid(format!(
                "step index {i} is out of range (the capture has {} readable steps)",
                self.steps.len()
            ))
        })
    }

    pub fn headers(&self) -> impl Iterator<Item = &StepHeader> {
        self.steps.iter().map(|s| &s.header)
    }

    /// The attention of step `i` (by position in the file), as float32.
    pub fn read(&mut self, i: usize, out: &mut Vec<f32>) -> Result<()> {
        let (chunk, slot, n) = {
            let s = self.steps.get(i).ok_or_else(|| {
                CoreError::Invalid(format!(
                    "step index {i} is out of range (the capture has {} readable steps)",
                    self.steps.len()
                ))
            })?;
            (s.chunk, s.slot, s.header.values())
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

    fn merge_meta(&mut self, raw: &[u8], chunk: usize) {
        match serde_json::from_slice::<Value>(raw) {
            Ok(Value::Object(m)) => self.meta.extend(m),
            _ => self.problems.push(ChunkProblem {
                chunk,
                offset: self.chunks[chunk].offset,
                message: "its metadata is not a JSON object".into(),
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
            .read_exact_at(&mut tail, len - FOOTER_LEN as u64)?;
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
        let Some((locations, headers)) = parse_index(&index) else {
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
                _ => {
                    self.chunks.clear();
                    return Ok(false);
                }
            }
        }
        for i in 0..self.chunks.len() {
            if self.chunks[i].header.kind == ChunkKind::Meta {
                match self.payload(i) {
                    Ok(raw) => self.merge_meta(&raw, i),
                    Err(e) => self.problems.push(ChunkProblem {
                        chunk: i,
                        offset: self.chunks[i].offset,
                        message: e.to_string(),
                    }),
                }
            }
        }
        let mut chunk = 0;
        for (ordinal, h) in headers.into_iter().enumerate() {
            let ordinal = ordinal as u32;
            while chunk < self.chunks.len() && {
                let c = &self.chunks[chunk].header;
                c.kind != ChunkKind::Steps || ordinal >= c.first_step + c.step_count
            } {
                chunk += 1;
            }
            if chunk == self.chunks.len() {
                self.chunks.clear();
                self.steps.clear();
                self.problems.clear();
                self.meta.clear();
                return Ok(false);
            }
            let slot = (ordinal - self.chunks[chunk].header.first_step) as usize;
            self.steps.push(Step {
                header: h,
                chunk,
                slot,
            });
        }
        self.indexed = true;
        Ok(true)
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
                ChunkKind::Meta => match self.payload(chunk) {
                    Ok(raw) => self.merge_meta(&raw, chunk),
                    Err(e) => self.problems.push(ChunkProblem {
                        chunk,
                        offset: self.chunks[chunk].offset,
                        message: e.to_string(),
                    }),
                },
                ChunkKind::Steps => match self.payload(chunk) {
                    Ok(raw) => {
                        let mut at = 0;
                        let mut slot = 0;
                        while at < raw.len() {
                            match StepHeader::decode(&raw[at..]) {
                                Ok((h, used)) => {
                                    at += used + 2 * h.values();
                                    self.steps.push(Step {
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
                    Err(e) => self.problems.push(ChunkProblem {
                        chunk,
                        offset: self.chunks[chunk].offset,
                        message: e.to_string(),
                    }),
                },
            }
        }
        Ok(())
    }

    fn resync(&self, from: u64, len: u64) -> Result<Option<u64>> {
        let mut buf = vec![0u8; (len - from.min(len)) as usize];
        self.file.read_exact_at(&mut buf, from)?;
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

fn parse_index(b: &[u8]) -> Option<(Locations, Vec<StepHeader>)> {
    let u32_at = |i: usize| Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?));
    let n = u32_at(0)? as usize;
    let mut at = 4;
    let mut locations = Vec::with_capacity(n);
    for _ in 0..n {
        let offset = u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?);
        locations.push((offset, u32_at(at + 12)?, u32_at(at + 16)?));
        at += 20;
    }
    let steps = u32_at(at)? as usize;
    at += 4;
    let mut headers = Vec::with_capacity(steps);
    for _ in 0..steps {
        let (h, used) = StepHeader::decode(b.get(at..)?).ok()?;
        headers.push(h);
        at += used;
    }
    Some((locations, headers))
}
