//! File header, chunk headers and the footer: fixed little-endian layouts with checksums.

use crate::error::{CoreError, Result};

/// The first 8 bytes of every capture file.
pub const FILE_MAGIC: &[u8; 8] = b"ATTNCAP\0";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// File header: magic, version u16, flags u16, reserved u32.
pub const FILE_HEADER_LEN: usize = 16;
pub const CHUNK_MAGIC: &[u8; 4] = b"CHNK";
pub const CHUNK_HEADER_LEN: usize = 32;
pub const FOOTER_MAGIC: &[u8; 8] = b"ATTNIDX\0";
/// Footer: magic, then the byte offset of the index chunk (u64).
pub const FOOTER_LEN: usize = 16;
/// zstd, the only codec of version 1.
pub const CODEC_ZSTD: u8 = 1;

/// What a chunk's payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// A JSON object merged into the capture's metadata (later keys win).
    Meta = 1,
    /// Step records.
    Steps = 2,
    /// The index written on close: chunk locations and every record's header.
    Index = 3,
    /// Prompt-row records (the rows of the prompt's positions, captured with prefill): the
    /// same layout as step records, counted apart. Added after the first files were written;
    /// a reader that predates it skips these chunks as damaged and reads every step.
    Prompt = 4,
}

impl ChunkKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Meta),
            2 => Some(Self::Steps),
            3 => Some(Self::Index),
            4 => Some(Self::Prompt),
            _ => None,
        }
    }
}

/// One chunk header. `first_step`/`step_count` are record ordinals in the file (0, 1, 2, ...
/// in write order; steps and prompt rows counted apart), so a reader finds the chunk of step
/// `i` without decompressing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub kind: ChunkKind,
    pub stored_len: u32,
    pub raw_len: u32,
    pub payload_crc: u32,
    pub first_step: u32,
    pub step_count: u32,
}

pub fn file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

pub fn check_file_header(h: &[u8]) -> Result<()> {
    if h.len() < FILE_HEADER_LEN || &h[..8] != FILE_MAGIC {
        return Err(CoreError::Capture(
            "not an attnfast capture file (bad magic in the first 8 bytes)".into(),
        ));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != FORMAT_VERSION {
        return Err(CoreError::Capture(format!(
            "capture format version {version} is not supported (this attnfast reads version {FORMAT_VERSION})"
        )));
    }
    Ok(())
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        h[..4].copy_from_slice(CHUNK_MAGIC);
        h[4] = self.kind as u8;
        h[5] = CODEC_ZSTD;
        h[8..12].copy_from_slice(&self.stored_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.raw_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.payload_crc.to_le_bytes());
        h[20..24].copy_from_slice(&self.first_step.to_le_bytes());
        h[24..28].copy_from_slice(&self.step_count.to_le_bytes());
        let crc = crc32fast::hash(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes a header; the message says what is wrong, the caller adds which chunk.
    pub fn decode(h: &[u8]) -> std::result::Result<Self, String> {
        if h.len() < CHUNK_HEADER_LEN {
            return Err("its header is truncated".into());
        }
        if &h[..4] != CHUNK_MAGIC {
            return Err("its header has no chunk magic".into());
        }
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        if crc32fast::hash(&h[..28]) != word(28) {
            return Err("its header failed its checksum".into());
        }
        let kind =
            ChunkKind::from_u8(h[4]).ok_or_else(|| format!("unknown chunk kind {}", h[4]))?;
        if h[5] != CODEC_ZSTD {
            return Err(format!("unknown codec {}", h[5]));
        }
        Ok(Self {
            kind,
            stored_len: word(8),
            raw_len: word(12),
            payload_crc: word(16),
            first_step: word(20),
            step_count: word(24),
        })
    }
}

pub fn footer(index_offset: u64) -> [u8; FOOTER_LEN] {
    let mut f = [0u8; FOOTER_LEN];
    f[..8].copy_from_slice(FOOTER_MAGIC);
    f[8..].copy_from_slice(&index_offset.to_le_bytes());
    f
}

/// The index chunk's offset, if `tail` (the last 16 bytes) is a footer.
pub fn decode_footer(tail: &[u8]) -> Option<u64> {
    if tail.len() == FOOTER_LEN && &tail[..8] == FOOTER_MAGIC {
        Some(u64::from_le_bytes(tail[8..16].try_into().ok()?))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let h = ChunkHeader {
            kind: ChunkKind::Steps,
            stored_len: 10,
            raw_len: 20,
            payload_crc: 7,
            first_step: 3,
            step_count: 4,
        };
        let mut bytes = h.encode();
        assert_eq!(ChunkHeader::decode(&bytes), Ok(h));
        bytes[13] ^= 1;
        assert_eq!(
            ChunkHeader::decode(&bytes),
            Err("its header failed its checksum".to_string())
        );
    }
}
