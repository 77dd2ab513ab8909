//! Zones: the seed discovery job's rules for naming a v1 fingerprint's attention program.
//!
//! In order: `syntax_floor` if local_mass > 0.5 and entropy < 2.5 (confidence
//! min(1, local * (1 - entropy / 4))); `structure_ripple` if long_mass > 0.25 and the population
//! variance of the 8 histogram values > 0.1 (confidence min(1, long + variance)); else
//! `semantic_bridge` (confidence mid / (local + mid + long), 0 when that sum is 0).

use crate::error::{CoreError, Result};
use crate::fingerprint::{FINGERPRINT_DIM, HIST_START};

/// A zone, with the codes used across the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Zone {
    SyntaxFloor = 0,
    SemanticBridge = 1,
    StructureRipple = 2,
    /// Used by the store for rows not yet classified; the rules never return it.
    Unknown = 3,
}

impl Zone {
    pub const ALL: [Zone; 4] = [
        Zone::SyntaxFloor,
        Zone::SemanticBridge,
        Zone::StructureRipple,
        Zone::Unknown,
    ];

    /// The name used in the seed's schema (`manifold_zone`) and everywhere else.
    pub fn name(self) -> &'static str {
        match self {
            Zone::SyntaxFloor => "syntax_floor",
            Zone::SemanticBridge => "semantic_bridge",
            Zone::StructureRipple => "structure_ripple",
            Zone::Unknown => "unknown",
        }
    }
}

/// The zone and confidence of one v1 fingerprint.
pub fn zone_of(fp: &[f32; FINGERPRINT_DIM]) -> (Zone, f32) {
    let (local, mid, long, entropy) = (fp[0] as f64, fp[1] as f64, fp[2] as f64, fp[3] as f64);
    if local > 0.5 && entropy < 2.5 {
        return (
            Zone::SyntaxFloor,
            (local * (1.0 - entropy / 4.0)).min(1.0) as f32,
        );
    }
    let hist = &fp[HIST_START..HIST_START + 8];
    let mean = hist.iter().map(|&h| h as f64).sum::<f64>() / 8.0;
    let variance = hist.iter().map(|&h| (h as f64 - mean).powi(2)).sum::<f64>() / 8.0;
    if long > 0.25 && variance > 0.1 {
        return (Zone::StructureRipple, (long + variance).min(1.0) as f32);
    }
    let total = local + mid + long;
    let confidence = if total > 0.0 { mid / total } else { 0.0 };
    (Zone::SemanticBridge, confidence as f32)
}

/// Zones of many fingerprints (rows of 20), as codes and confidences. Non-finite input is an
/// error naming the row: a zone of garbage would look like data.
pub fn zones_of(fps: &[f32]) -> Result<(Vec<u8>, Vec<f32>)> {
    if fps.len() % FINGERPRINT_DIM != 0 {
        return Err(CoreError::Shape(format!(
            "fingerprints must be rows of {FINGERPRINT_DIM} floats, got {} values",
            fps.len()
        )));
    }
    let rows = fps.len() / FINGERPRINT_DIM;
    let mut codes = Vec::with_capacity(rows);
    let mut confidences = Vec::with_capacity(rows);
    for (r, fp) in fps.chunks_exact(FINGERPRINT_DIM).enumerate() {
        if let Some(i) = fp.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::AttentionValue(format!(
                "fingerprint row {r} has {} at index {i}",
                if fp[i].is_nan() { "NaN" } else { "infinity" }
            )));
        }
        let (zone, confidence) = zone_of(fp.try_into().expect("chunks of 20"));
        codes.push(zone as u8);
        confidences.push(confidence);
    }
    Ok((codes, confidences))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(local: f32, mid: f32, long: f32, entropy: f32, hist: [f32; 8]) -> [f32; 20] {
        let mut v = [0.0f32; 20];
        v[..4].copy_from_slice(&[local, mid, long, entropy]);
        v[4..12].copy_from_slice(&hist);
        v
    }

    #[test]
    fn rules_in_order() {
        let (z, c) = zone_of(&fp(
            0.9,
            0.1,
            0.0,
            1.0,
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ));
        assert_eq!(z, Zone::SyntaxFloor);
        assert!((c - 0.9 * 0.75).abs() < 1e-6);
        // Long and concentrated: all mass in one histogram bin gives variance 0.109375.
        let (z, c) = zone_of(&fp(
            0.0,
            0.0,
            1.0,
            3.0,
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        ));
        assert_eq!(z, Zone::StructureRipple);
        assert_eq!(c, 1.0);
        let (z, c) = zone_of(&fp(0.2, 0.6, 0.2, 3.0, [0.125; 8]));
        assert_eq!(z, Zone::SemanticBridge);
        assert!((c - 0.6).abs() < 1e-6);
        // Local but high entropy falls through to the later rules.
        let (z, _) = zone_of(&fp(0.9, 0.1, 0.0, 2.5, [0.125; 8]));
        assert_eq!(z, Zone::SemanticBridge);
        assert_eq!(zone_of(&[0.0; 20]), (Zone::SemanticBridge, 0.0));
    }

    #[test]
    fn non_finite_rows_are_named() {
        let mut rows = vec![0.1f32; 40];
        rows[25] = f32::NAN;
        assert_eq!(
            zones_of(&rows).unwrap_err().to_string(),
            "fingerprint row 1 has NaN at index 5"
        );
    }
}
