//! Run-time choice of the vector path: the best the CPU has, capped by `set_limit` (tests use
//! the cap to run every path on one machine).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// Vector paths, slowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Baseline = 0,
    Avx2Fma = 1,
    Avx512 = 2,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Baseline, Level::Avx2Fma, Level::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Avx2Fma => "avx2+fma",
            Level::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == name)
    }
}

static LIMIT: AtomicU8 = AtomicU8::new(Level::Avx512 as u8);

/// Caps the path used from now on.
pub fn set_limit(limit: Level) {
    LIMIT.store(limit as u8, Ordering::Relaxed);
}

/// The best path this CPU supports, detected once.
pub fn detected() -> Level {
    static DETECTED: OnceLock<Level> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                return if has!("avx512f") {
                    Level::Avx512
                } else {
                    Level::Avx2Fma
                };
            }
        }
        Level::Baseline
    })
}

/// The path in use: the detected one, capped. Called once per step, so it is two loads.
#[inline]
pub fn level() -> Level {
    let limit = Level::ALL[LIMIT.load(Ordering::Relaxed) as usize];
    limit.min(detected())
}
