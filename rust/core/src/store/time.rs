//! Store times: integers (unix microseconds, UTC) inside, the seed's `YYYY-MM-DD HH:MM:SS`
//! text where the seed's columns need text. Integers compare correctly whatever the format of
//! the other side, which is how the seed's 'T'-versus-space bug cannot happen here.

use std::time::{SystemTime, UNIX_EPOCH};

pub const MICROS_PER_HOUR: i64 = 3_600_000_000;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// Now, in unix microseconds.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The civil date of a day number since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD`, the day of a time.
pub fn format_day(us: i64) -> String {
    let (y, m, d) = civil_from_days(us.div_euclid(MICROS_PER_DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD HH:MM:SS`, the format of SQLite's CURRENT_TIMESTAMP (seconds truncated, as
/// SQLite's `strftime(..., 'unixepoch')` on the same value).
pub fn format_timestamp(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let in_day = secs.rem_euclid(86_400);
    format!(
        "{} {:02}:{:02}:{:02}",
        format_day(us),
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_times() {
        assert_eq!(format_timestamp(0), "1970-01-01 00:00:00");
        // 2026-01-02 03:04:05.9 UTC
        assert_eq!(
            format_timestamp(1_767_323_045_900_000),
            "2026-01-02 03:04:05"
        );
        assert_eq!(format_day(951_782_400_000_000), "2000-02-29");
        assert_eq!(format_timestamp(-1), "1969-12-31 23:59:59");
    }
}
