//! Layout tags. A fingerprint's 20 floats mean different things in different producers; the
//! tag travels with every stored vector so that layouts are never mixed.

use crate::error::{CoreError, Result};

/// A fingerprint layout that attnfast can store and unpack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// attnfast's native layout (`shared/specs/fingerprint-v1.md`), the seed's schema version 1.
    #[default]
    V1,
    /// The 20 floats that the SGLang attention-explorer server sends:
    /// `[local(<8), mid(8..255), long(>=256), entropy/ln16, hist16]`.
    Sglang,
}

impl Layout {
    pub const ALL: [Layout; 2] = [Layout::V1, Layout::Sglang];

    /// The integer stored in the `schema_version` column. Native layouts count up from 1;
    /// foreign layouts start at 1001 so that a future native v2 can never collide with them.
    pub fn code(self) -> u32 {
        match self {
            Layout::V1 => 1,
            Layout::Sglang => 1001,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::V1 => "v1",
            Layout::Sglang => "sglang",
        }
    }

    /// Floats per vector.
    pub fn dim(self) -> usize {
        20
    }

    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Layout::V1 => &crate::fingerprint::FINGERPRINT_FIELDS,
            Layout::Sglang => &SGLANG_FIELDS,
        }
    }

    pub fn from_code(code: u32) -> Result<Layout> {
        Layout::ALL
            .into_iter()
            .find(|l| l.code() == code)
            .ok_or_else(|| {
                CoreError::Layout(format!(
                    "unknown fingerprint layout code {code}; this attnfast {} reads {}",
                    crate::VERSION,
                    known_layouts()
                ))
            })
    }

    pub fn from_name(name: &str) -> Result<Layout> {
        Layout::ALL
            .into_iter()
            .find(|l| l.name() == name)
            .ok_or_else(|| {
                CoreError::Layout(format!(
                    "unknown fingerprint layout {name:?}; this attnfast {} reads {}",
                    crate::VERSION,
                    known_layouts()
                ))
            })
    }
}

fn known_layouts() -> String {
    Layout::ALL
        .iter()
        .map(|l| format!("{} (code {})", l.name(), l.code()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Field names of the SGLang server's vector, in order.
pub const SGLANG_FIELDS: [&str; 20] = [
    "local_mass",
    "mid_mass",
    "long_mass",
    "entropy_norm",
    "hist_log2_0",
    "hist_log2_1",
    "hist_log2_2",
    "hist_log2_3",
    "hist_log2_4",
    "hist_log2_5",
    "hist_log2_6",
    "hist_log2_7",
    "hist_log2_8",
    "hist_log2_9",
    "hist_log2_10",
    "hist_log2_11",
    "hist_log2_12",
    "hist_log2_13",
    "hist_log2_14",
    "hist_log2_15",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for layout in Layout::ALL {
            assert_eq!(Layout::from_code(layout.code()).unwrap(), layout);
            assert_eq!(Layout::from_name(layout.name()).unwrap(), layout);
            assert_eq!(layout.fields().len(), layout.dim());
        }
    }

    #[test]
    fn unknown_layout_is_named() {
        let err = Layout::from_code(2).unwrap_err().to_string();
        assert!(err.contains("code 2"), "{err}");
        assert!(err.contains("v1 (code 1)"), "{err}");
        assert!(
            Layout::from_name("v9")
                .unwrap_err()
                .to_string()
                .contains("\"v9\"")
        );
    }
}
