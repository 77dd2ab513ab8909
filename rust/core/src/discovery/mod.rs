//! Discovery's online half: the classifier that places fingerprints among a discovery run's
//! sample and names their cluster, and the reader of the run's artifact folder.
//!
//! The Python job fits the scaler, PCA, UMAP and HDBSCAN; it then hands this module the sample
//! it fitted on and asks it to place every other fingerprint, so the job and the online
//! classifier share one implementation (`docs/discovery-artifacts.md` is the format between
//! them). Placing a fingerprint: project it (scaler then PCA, one affine map), find its nearest
//! sample points in that space with a k-d tree (a bounded search: `index.rs` says why), and take the distance-weighted vote of their
//! clusters; its 2-D position and membership probability are the weighted means over the
//! neighbours of the winning cluster. A fingerprint equal to a sample point takes that point's
//! fit exactly, so the classifier repeats the job's labels.

pub mod artifact;
pub mod classifier;
pub mod index;
pub mod ingest;
pub mod projection;

pub use classifier::{Assignments, Classifier, Sample};
pub use projection::Projection;
