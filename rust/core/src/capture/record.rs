//! One step record: a fixed 40-byte header, the token text, then the attention as float16 in
//! two byte planes. The same header (without the attention) makes up the index's step table.

use half::f16;

/// The two kinds of record: a generation step, or a prompt row (the attention of one prompt
/// position, captured with prefill). Same layout; stored in chunks of their own kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Step = 0,
    Prompt = 1,
}

impl Record {
    pub fn chunk_kind(self) -> super::chunk::ChunkKind {
        match self {
            Record::Step => super::chunk::ChunkKind::Steps,
            Record::Prompt => super::chunk::ChunkKind::Prompt,
        }
    }
}

/// Fixed part of a step header, in bytes.
pub const STEP_HEADER_LEN: usize = 40;

/// What the file says about one captured step (one generated token of one sequence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepHeader {
    /// Which sequence of the capture (0 for a single prompt).
    pub sequence: u32,
    /// The generation step (0 = the token chosen from the prompt's last position).
    pub step: u32,
    /// The generated token, or -1 when it was not known.
    pub token_id: i64,
    /// The position the generated token takes in its sequence.
    pub position: u32,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub layers: u16,
    pub heads: u16,
    /// Keys per attention row.
    pub context_len: u32,
    pub text: String,
}

impl StepHeader {
    /// Attention values in the record.
    pub fn values(&self) -> usize {
        self.layers as usize * self.heads as usize * self.context_len as usize
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.step.to_le_bytes());
        out.extend_from_slice(&self.token_id.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&self.layers.to_le_bytes());
        out.extend_from_slice(&self.heads.to_le_bytes());
        out.extend_from_slice(&self.context_len.to_le_bytes());
        out.extend_from_slice(&(self.text.len() as u32).to_le_bytes());
        out.extend_from_slice(self.text.as_bytes());
    }

    /// Decodes a header at the start of `b`; returns it and the bytes it took.
    pub fn decode(b: &[u8]) -> std::result::Result<(Self, usize), String> {
        if b.len() < STEP_HEADER_LEN {
            return Err("a step header is truncated".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let i64_at = |i: usize| i64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        let text_len = u32_at(36) as usize;
        let end = STEP_HEADER_LEN
            .checked_add(text_len)
            .filter(|&e| e <= b.len())
            .ok_or("a step's token text runs past the end of its chunk")?;
        let text = std::str::from_utf8(&b[STEP_HEADER_LEN..end])
            .map_err(|_| "a step's token text is not UTF-8")?
            .to_string();
        Ok((
            Self {
                sequence: u32_at(0),
                step: u32_at(4),
                token_id: i64_at(8),
                position: u32_at(16),
                timestamp_ms: i64_at(20),
                layers: u16_at(28),
                heads: u16_at(30),
                context_len: u32_at(32),
                text,
            },
            end,
        ))
    }
}

/// Appends float16 values as two planes: every low byte, then every high byte.
pub fn put_planes(values: impl ExactSizeIterator<Item = f16>, out: &mut Vec<u8>) {
    let n = values.len();
    let start = out.len();
    out.resize(start + 2 * n, 0);
    let (low, high) = out[start..].split_at_mut(n);
    for ((v, l), h) in values.zip(low.iter_mut()).zip(high.iter_mut()) {
        let [a, b] = v.to_bits().to_le_bytes();
        *l = a;
        *h = b;
    }
}

/// Reads `n` float16 values stored as two planes at the start of `b`.
pub fn get_planes(b: &[u8], n: usize, out: &mut [f16]) -> std::result::Result<(), String> {
    if b.len() < 2 * n || out.len() != n {
        return Err("a step's attention runs past the end of its chunk".into());
    }
    let (low, high) = b[..2 * n].split_at(n);
    for ((o, &l), &h) in out.iter_mut().zip(low).zip(high) {
        *o = f16::from_bits(u16::from_le_bytes([l, h]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_planes_round_trip() {
        let h = StepHeader {
            sequence: 2,
            step: 9,
            token_id: -1,
            position: 40,
            timestamp_ms: 1_763_681_850_123,
            layers: 3,
            heads: 2,
            context_len: 5,
            text: " héllo".into(),
        };
        let mut buf = Vec::new();
        h.encode_into(&mut buf);
        let values: Vec<f16> = (0..h.values())
            .map(|i| f16::from_f32(i as f32 / 7.0))
            .collect();
        put_planes(values.iter().copied(), &mut buf);
        let (back, used) = StepHeader::decode(&buf).unwrap();
        assert_eq!(back, h);
        let mut out = vec![f16::ZERO; h.values()];
        get_planes(&buf[used..], h.values(), &mut out).unwrap();
        assert_eq!(out, values);
        assert!(StepHeader::decode(&buf[..used - 1]).is_err());
    }
}
