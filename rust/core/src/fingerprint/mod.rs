//! Attention fingerprints, layout v1 (`shared/specs/fingerprint-v1.md`, mirrored in
//! `docs/fingerprint-v1.md`).

pub(crate) mod accumulate;
mod dense;
pub mod fastmath;
pub(crate) mod kernel;
pub mod segments;
pub mod simd;
mod sparse;

pub use dense::{AttnShape, compute_dense};
pub use kernel::Element;
pub use sparse::{TopkShape, compute_sparse};

/// Floats per fingerprint.
pub const FINGERPRINT_DIM: usize = 20;

/// The 20 field names, in order.
pub const FINGERPRINT_FIELDS: [&str; FINGERPRINT_DIM] = [
    "local_mass",
    "mid_mass",
    "long_mass",
    "entropy",
    "hist_d0",
    "hist_d1_4",
    "hist_d4_16",
    "hist_d16_64",
    "hist_d64_256",
    "hist_d256_1k",
    "hist_d1k_4k",
    "hist_d4k_inf",
    "layer_entropy_0",
    "layer_entropy_1",
    "layer_entropy_2",
    "layer_entropy_3",
    "layer_entropy_4",
    "layer_entropy_5",
    "layer_entropy_6",
    "layer_entropy_7",
];

/// Index of the first histogram value.
pub const HIST_START: usize = 4;
/// Index of the first layer-entropy slot.
pub const LAYER_ENTROPY_START: usize = 12;
/// Number of layer-entropy slots.
pub const LAYER_SLOTS: usize = 8;
