//! The capture writer. The caller's thread encodes step records into a chunk buffer; full
//! chunks go through a bounded channel to a thread that compresses and writes them, so
//! compression overlaps generation and memory stays at a few chunks however long the capture.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, bounded};
use half::f16;
use half::slice::HalfFloatSliceExt;

use super::chunk::{ChunkHeader, ChunkKind, file_header, footer};
use super::record::{Record, StepHeader, put_planes};
use crate::error::{CoreError, Result};

/// Chunks waiting for the compressor at most; with the one being filled and the one being
/// compressed, the writer holds at most four chunks.
const QUEUED_CHUNKS: usize = 2;

#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// A chunk is sealed once its raw records reach this many bytes.
    pub chunk_bytes: usize,
    /// zstd level (1 fast ... 19 small).
    pub level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            chunk_bytes: 4 << 20,
            level: 3,
        }
    }
}

enum Job {
    Chunk {
        kind: ChunkKind,
        raw: Vec<u8>,
        first_step: u32,
        count: u32,
    },
}

/// Where a chunk landed, for the index.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLocation {
    pub offset: u64,
    pub kind: ChunkKind,
    pub first_step: u32,
    pub step_count: u32,
}

/// What the compressor thread hands back when its queue closes: where each chunk landed, and
/// the file positioned after the last one, for the index.
struct Written {
    locations: Vec<ChunkLocation>,
    out: BufWriter<File>,
    offset: u64,
}

pub struct CaptureWriter {
    opts: WriterOptions,
    path: String,
    /// The chunk being filled: its records, their kind, and the first one's ordinal.
    buf: Vec<u8>,
    buf_kind: Record,
    buf_first: u32,
    /// Records written, and their headers for the index: steps, then prompt rows.
    counts: [u32; 2],
    headers: [Vec<u8>; 2],
    half: Vec<f16>,
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<Result<Written>>>,
}

impl CaptureWriter {
    /// Creates (or truncates) `path` and writes `meta_json` as the first metadata chunk.
    pub fn create(path: &Path, meta_json: &str, opts: WriterOptions) -> Result<Self> {
        if opts.chunk_bytes == 0 || !(1..=22).contains(&opts.level) {
            return Err(CoreError::Invalid(format!(
                "chunk_bytes must be positive and level 1..22, got {} and {}",
                opts.chunk_bytes, opts.level
            )));
        }
        let file = File::create(path)
            .map_err(|e| CoreError::Capture(format!("cannot create {}: {e}", path.display())))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let shown = path.display().to_string();
        let io = move |e: std::io::Error| CoreError::Capture(format!("cannot write {shown}: {e}"));
        out.write_all(&file_header()).map_err(&io)?;
        let (tx, rx) = bounded::<Job>(QUEUED_CHUNKS);
        let level = opts.level;
        let thread = std::thread::Builder::new()
            .name("attnfast-capture".into())
            .spawn(move || -> Result<Written> {
                let mut locations = Vec::new();
                let mut offset = super::chunk::FILE_HEADER_LEN as u64;
                for job in rx {
                    let Job::Chunk {
                        kind,
                        raw,
                        first_step,
                        count,
                    } = job;
                    let loc = ChunkLocation {
                        offset,
                        kind,
                        first_step,
                        step_count: count,
                    };
                    offset += write_chunk(&mut out, kind, &raw, first_step, count, level, &io)?;
                    // Each sealed chunk reaches the OS at once: a crash loses only later ones.
                    out.flush().map_err(&io)?;
                    locations.push(loc);
                }
                Ok(Written {
                    locations,
                    out,
                    offset,
                })
            })
            .map_err(|e| CoreError::Capture(format!("cannot start the capture writer: {e}")))?;
        let mut w = Self {
            opts,
            path: path.display().to_string(),
            buf: Vec::new(),
            buf_kind: Record::Step,
            buf_first: 0,
            counts: [0, 0],
            headers: [Vec::new(), Vec::new()],
            half: Vec::new(),
            tx: Some(tx),
            thread: Some(thread),
        };
        w.write_meta(meta_json)?;
        Ok(w)
    }

    /// Steps written so far.
    pub fn steps(&self) -> u32 {
        self.counts[Record::Step as usize]
    }

    /// Prompt rows written so far.
    pub fn prompt_rows(&self) -> u32 {
        self.counts[Record::Prompt as usize]
    }

    /// Merges a JSON object into the capture's metadata (later keys win).
    pub fn write_meta(&mut self, json: &str) -> Result<()> {
        match serde_json::from_str::<serde_json::Value>(json) {
            Ok(serde_json::Value::Object(_)) => {}
            _ => {
                return Err(CoreError::Invalid(
                    "capture metadata must be a JSON object".into(),
                ));
            }
        }
        self.seal()?;
        self.send(ChunkKind::Meta, json.as_bytes().to_vec(), self.steps(), 0)
    }

    /// Appends one step; `values` are its `layers x heads x context_len` attention weights.
    pub fn write_step_f32(&mut self, header: &StepHeader, values: &[f32]) -> Result<()> {
        self.write_f32(Record::Step, header, values)
    }

    /// Appends one step from float16 values.
    pub fn write_step_f16(&mut self, header: &StepHeader, values: &[f16]) -> Result<()> {
        self.write_f16(Record::Step, header, values)
    }

    /// Appends one record of either kind from float32 values.
    pub fn write_f32(&mut self, kind: Record, header: &StepHeader, values: &[f32]) -> Result<()> {
        self.check(kind, header, values.len())?;
        if let Some(i) = values.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(CoreError::AttentionValue(format!(
                "step {} of sequence {}: attention value {} at index {i} is not a finite \
                 non-negative number",
                header.step, header.sequence, values[i]
            )));
        }
        self.half.resize(values.len(), f16::ZERO);
        self.half.convert_from_f32_slice(values);
        let half = std::mem::take(&mut self.half);
        let r = self.push(kind, header, &half);
        self.half = half;
        r
    }

    /// Appends one record of either kind from float16 values.
    pub fn write_f16(&mut self, kind: Record, header: &StepHeader, values: &[f16]) -> Result<()> {
        self.check(kind, header, values.len())?;
        if let Some(i) = values
            .iter()
            .position(|v| !v.is_finite() || v.is_sign_negative() && *v != f16::ZERO)
        {
            return Err(CoreError::AttentionValue(format!(
                "step {} of sequence {}: attention value {} at index {i} is not a finite \
                 non-negative number",
                header.step, header.sequence, values[i]
            )));
        }
        self.push(kind, header, values)
    }

    /// Seals the last chunk, writes the index and footer, and syncs the file.
    pub fn close(mut self) -> Result<u64> {
        self.seal()?;
        let tx = self.tx.take();
        drop(tx);
        let Written {
            locations,
            mut out,
            offset,
        } = self.join()?;
        let [steps, prompt] = &self.headers;
        let mut index = Vec::with_capacity(12 + 20 * locations.len() + steps.len() + prompt.len());
        index.extend_from_slice(&(locations.len() as u32).to_le_bytes());
        for l in &locations {
            index.extend_from_slice(&l.offset.to_le_bytes());
            index.extend_from_slice(&[l.kind as u8, 0, 0, 0]);
            index.extend_from_slice(&l.first_step.to_le_bytes());
            index.extend_from_slice(&l.step_count.to_le_bytes());
        }
        index.extend_from_slice(&self.steps().to_le_bytes());
        index.extend_from_slice(steps);
        // Prompt rows follow, in files that have them (older readers stop before them).
        if self.prompt_rows() > 0 {
            index.extend_from_slice(&self.prompt_rows().to_le_bytes());
            index.extend_from_slice(prompt);
        }
        let path = self.path.clone();
        let io = |e: std::io::Error| CoreError::Capture(format!("cannot write {path}: {e}"));
        let len = write_chunk(
            &mut out,
            ChunkKind::Index,
            &index,
            0,
            self.steps(),
            self.opts.level,
            &io,
        )?;
        out.write_all(&footer(offset)).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(offset + len + super::chunk::FOOTER_LEN as u64)
    }

    fn check(&mut self, kind: Record, header: &StepHeader, n: usize) -> Result<()> {
        if n != header.values() {
            return Err(CoreError::Shape(format!(
                "step {}: {} attention values given for {} layers x {} heads x {} keys",
                header.step, n, header.layers, header.heads, header.context_len
            )));
        }
        if self.counts[kind as usize] == u32::MAX {
            return Err(CoreError::Invalid(
                "a capture file holds at most 2^32 - 1 steps and as many prompt rows".into(),
            ));
        }
        Ok(())
    }

    fn push(&mut self, kind: Record, header: &StepHeader, values: &[f16]) -> Result<()> {
        if !self.buf.is_empty() && self.buf_kind != kind {
            self.seal()?; // a chunk holds records of one kind
        }
        if self.buf.is_empty() {
            self.buf_kind = kind;
            self.buf_first = self.counts[kind as usize];
        }
        header.encode_into(&mut self.buf);
        put_planes(values.iter().copied(), &mut self.buf);
        header.encode_into(&mut self.headers[kind as usize]);
        self.counts[kind as usize] += 1;
        if self.buf.len() >= self.opts.chunk_bytes {
            self.seal()?;
        }
        Ok(())
    }

    /// Sends the chunk being filled, if any, to the compressor.
    fn seal(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let raw = std::mem::take(&mut self.buf);
        let kind = self.buf_kind;
        let count = self.counts[kind as usize] - self.buf_first;
        self.send(kind.chunk_kind(), raw, self.buf_first, count)
    }

    fn send(&mut self, kind: ChunkKind, raw: Vec<u8>, first_step: u32, count: u32) -> Result<()> {
        let job = Job::Chunk {
            kind,
            raw,
            first_step,
            count,
        };
        let sent = self
            .tx
            .as_ref()
            .map(|tx| tx.send(job).is_ok())
            .unwrap_or(false);
        if sent {
            return Ok(());
        }
        // The compressor stopped: report why.
        self.tx = None;
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(CoreError::Capture(format!(
                "the capture writer of {} stopped",
                self.path
            ))),
        }
    }

    fn join(&mut self) -> Result<Written> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| CoreError::Capture("the capture writer thread panicked".into()))?,
            None => Err(CoreError::Capture(format!(
                "the capture writer of {} is closed",
                self.path
            ))),
        }
    }
}

impl Drop for CaptureWriter {
    /// Dropped without `close`: the sealed chunks are on disk (readable by scanning), the index
    /// is not.
    fn drop(&mut self) {
        let _ = self.seal();
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_chunk(
    out: &mut impl Write,
    kind: ChunkKind,
    raw: &[u8],
    first_step: u32,
    count: u32,
    level: i32,
    io: &impl Fn(std::io::Error) -> CoreError,
) -> Result<u64> {
    let stored = zstd::bulk::compress(raw, level)
        .map_err(|e| CoreError::Capture(format!("zstd compression failed: {e}")))?;
    let too_big =
        |n: usize| u32::try_from(n).map_err(|_| CoreError::Capture("a chunk is over 4 GiB".into()));
    let header = ChunkHeader {
        kind,
        stored_len: too_big(stored.len())?,
        raw_len: too_big(raw.len())?,
        payload_crc: crc32fast::hash(&stored),
        first_step,
        step_count: count,
    };
    out.write_all(&header.encode()).map_err(io)?;
    out.write_all(&stored).map_err(io)?;
    Ok((super::chunk::CHUNK_HEADER_LEN + stored.len()) as u64)
}
