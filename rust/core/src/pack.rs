//! Packed fingerprints: `dim` little-endian float32 per row, rows back to back, no header.
//! The layout tag travels beside the blob (a column, a message field), never inside it.

use crate::error::{CoreError, Result};
use crate::layout::Layout;

/// Bytes per packed row of `layout`.
pub fn row_bytes(layout: Layout) -> usize {
    layout.dim() * 4
}

/// The first non-finite value of `values` seen as `dim`-wide rows, as an error.
fn check_finite(values: &[f32], dim: usize, what: &str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => {
            let v = values[i];
            let kind = if v.is_nan() {
                "NaN"
            } else if v > 0.0 {
                "infinity"
            } else {
                "-infinity"
            };
            Err(CoreError::Blob(format!(
                "{what} row {} has {kind} at index {}",
                i / dim,
                i % dim
            )))
        }
    }
}

/// Packs `values` (rows of `layout.dim()` floats) into `out`, which must be exactly
/// `values.len() * 4` bytes. Non-finite values are refused: they would be stored as garbage.
pub fn pack_into(values: &[f32], layout: Layout, out: &mut [u8]) -> Result<()> {
    let dim = layout.dim();
    if values.len() % dim != 0 {
        return Err(CoreError::Shape(format!(
            "fingerprints must be rows of {dim} floats, got {} values",
            values.len()
        )));
    }
    if out.len() != values.len() * 4 {
        return Err(CoreError::Shape(format!(
            "output buffer is {} bytes, {} floats need {}",
            out.len(),
            values.len(),
            values.len() * 4
        )));
    }
    check_finite(values, dim, "fingerprint")?;
    for (chunk, v) in out.chunks_exact_mut(4).zip(values) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// Packs into a new buffer.
pub fn pack(values: &[f32], layout: Layout) -> Result<Vec<u8>> {
    let mut out = vec![0u8; values.len() * 4];
    pack_into(values, layout, &mut out)?;
    Ok(out)
}

/// Unpacks a blob of whole rows. A blob whose length is not a whole number of rows, or that
/// holds non-finite values, is refused rather than misread (a v2 blob read as v1, a truncated
/// write, random bytes).
pub fn unpack(blob: &[u8], layout: Layout) -> Result<Vec<f32>> {
    let row = row_bytes(layout);
    if blob.len() % row != 0 {
        return Err(CoreError::Blob(format!(
            "blob of {} bytes is not a whole number of {row}-byte {} rows ({} rows and {} bytes \
             left over)",
            blob.len(),
            layout.name(),
            blob.len() / row,
            blob.len() % row
        )));
    }
    let values: Vec<f32> = blob
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    check_finite(&values, layout.dim(), "packed")?;
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(rows in proptest::collection::vec(proptest::array::uniform20(-1e30f32..1e30), 0..50)) {
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            let blob = pack(&flat, Layout::V1).unwrap();
            prop_assert_eq!(blob.len(), flat.len() * 4);
            prop_assert_eq!(unpack(&blob, Layout::V1).unwrap(), flat);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(values) = unpack(&bytes, Layout::V1) {
                prop_assert!(values.iter().all(|v| v.is_finite()));
                prop_assert_eq!(values.len() * 4, bytes.len());
            }
        }
    }

    #[test]
    fn little_endian_on_the_wire() {
        let mut row = [0.0f32; 20];
        row[0] = 1.0;
        let blob = pack(&row, Layout::V1).unwrap();
        assert_eq!(&blob[..4], &[0x00, 0x00, 0x80, 0x3f]);
    }

    #[test]
    fn errors_name_row_and_index() {
        let mut rows = vec![0.5f32; 60];
        rows[20 + 3] = f32::NAN;
        assert_eq!(
            pack(&rows, Layout::V1).unwrap_err().to_string(),
            "fingerprint row 1 has NaN at index 3"
        );
        let err = unpack(&[0u8; 170], Layout::V1).unwrap_err().to_string();
        assert!(
            err.contains("170 bytes") && err.contains("2 rows and 10 bytes"),
            "{err}"
        );
        let mut blob = pack(&[0.5f32; 40], Layout::V1).unwrap();
        blob[80 + 19 * 4..80 + 20 * 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        assert_eq!(
            unpack(&blob, Layout::V1).unwrap_err().to_string(),
            "packed row 1 has infinity at index 19"
        );
    }
}
