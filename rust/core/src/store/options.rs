//! How a store is opened: durability, waiting on other writers, memory bound, duplicates.

use std::time::Duration;

use crate::error::{CoreError, Result};

/// SQLite's `synchronous` setting. In WAL mode both survive a killed process; `Full` also
/// survives power loss of the last commits, at one fsync per commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Normal,
    Full,
}

impl Synchronous {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "normal" => Ok(Self::Normal),
            "full" => Ok(Self::Full),
            _ => Err(CoreError::Invalid(format!(
                "synchronous must be 'normal' or 'full', got {name:?}"
            ))),
        }
    }

    pub fn pragma(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

/// What happens to a row whose `(request_id, step)` is already stored. Neither overwrites:
/// the seed's INSERT OR REPLACE lost all but one row per request that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// Keep the stored row, drop the new one, count it in `stats().duplicates_rejected`.
    Skip,
    /// As `Skip`, and the next `flush()` raises `DuplicateStepError` naming the rows.
    Error,
}

impl DuplicatePolicy {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "skip" => Ok(Self::Skip),
            "error" => Ok(Self::Error),
            _ => Err(CoreError::Invalid(format!(
                "on_duplicate must be 'skip' or 'error', got {name:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub synchronous: Synchronous,
    /// How long a write waits for another process's transaction before failing.
    pub busy_timeout: Duration,
    /// Rows appended but not yet written, at most; `append` waits beyond it (back-pressure).
    pub max_queued_rows: usize,
    pub on_duplicate: DuplicatePolicy,
    /// Add attnfast's tables to an SQLite database that holds other tables; without it such a
    /// database is refused and left as it is.
    pub init: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(60),
            max_queued_rows: 1 << 18,
            on_duplicate: DuplicatePolicy::Skip,
            init: false,
        }
    }
}
