//! LEB128 unsigned varints: small deltas take one byte.

use crate::{CoreError, Result};

pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one varint at `*at`, advancing it; refuses truncated input and values over 64 bits.
pub fn get(bytes: &[u8], at: &mut usize, what: &str) -> Result<u64> {
    let mut v: u64 = 0;
    let mut shift = 0u32;
    loop {
        let Some(&b) = bytes.get(*at) else {
            return Err(CoreError::Graph(format!("{what} ends inside a number")));
        };
        *at += 1;
        if shift == 63 && b > 1 {
            return Err(CoreError::Graph(format!(
                "{what} holds a number over 64 bits"
            )));
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
        shift += 7;
        if shift > 63 {
            return Err(CoreError::Graph(format!(
                "{what} holds a number over 64 bits"
            )));
        }
    }
}
