//! What the writer maintains per transaction besides the rows themselves: `request_summary`
//! (equal to what the seed's per-row trigger would give), the hourly zone counts, the daily
//! cluster counts and the hourly id ranges. Accumulated in memory while rows are inserted, written once per commit.

use std::collections::HashMap;

use rusqlite::{Transaction, params};

use super::time::{MICROS_PER_DAY, MICROS_PER_HOUR, format_timestamp};
use crate::error::Result;

/// The trigger's view of one request within one transaction.
#[derive(Debug)]
struct RequestDelta {
    rows: i64,
    think: i64,
    output: i64,
    first_is_think: bool,
    first_is_output: bool,
    first_model_id: Option<String>,
    first_us: i64,
    last_us: i64,
}

#[derive(Debug, Default)]
pub struct Deltas {
    requests: HashMap<String, RequestDelta>,
    zone_hours: HashMap<(i64, u8), (i64, f64, i64)>,
    cluster_days: HashMap<(i64, i64), i64>,
    hour_ids: HashMap<i64, (i64, i64)>,
    pub inserted: u64,
    pub duplicates: u64,
}

/// One inserted row, as the deltas need it.
pub struct InsertedRow<'a> {
    pub id: i64,
    pub request_id: &'a str,
    pub phase: Option<u8>,
    pub model_id: Option<&'a str>,
    pub created_us: i64,
    pub zone: Option<u8>,
    pub confidence: Option<f64>,
    pub cluster_id: Option<i64>,
}

impl Deltas {
    pub fn add(&mut self, row: InsertedRow<'_>) {
        self.inserted += 1;
        let think = row.phase == Some(0);
        let output = row.phase == Some(1);
        match self.requests.get_mut(row.request_id) {
            Some(d) => {
                d.rows += 1;
                d.think += i64::from(think);
                d.output += i64::from(output);
                d.last_us = row.created_us;
            }
            None => {
                self.requests.insert(
                    row.request_id.to_owned(),
                    RequestDelta {
                        rows: 1,
                        think: i64::from(think),
                        output: i64::from(output),
                        first_is_think: think,
                        first_is_output: output,
                        first_model_id: row.model_id.map(str::to_owned),
                        first_us: row.created_us,
                        last_us: row.created_us,
                    },
                );
            }
        }
        let hour = row.created_us.div_euclid(MICROS_PER_HOUR);
        let ids = self.hour_ids.entry(hour).or_insert((row.id, row.id));
        ids.0 = ids.0.min(row.id);
        ids.1 = ids.1.max(row.id);
        if let Some(zone) = row.zone {
            let e = self.zone_hours.entry((hour, zone)).or_default();
            e.0 += 1;
            if let Some(c) = row.confidence {
                e.1 += c;
                e.2 += 1;
            }
        }
        if let Some(cluster) = row.cluster_id.filter(|&c| c >= 0) {
            *self
                .cluster_days
                .entry((row.created_us.div_euclid(MICROS_PER_DAY), cluster))
                .or_default() += 1;
        }
    }

    /// Writes the accumulated deltas in `tx`.
    pub fn write(&self, tx: &Transaction<'_>) -> Result<()> {
        // The seed's trigger, applied to a run of rows at once: a new request starts with
        // the first row's model and time and does not count that row's phase; an existing one
        // adds every row. finished_at is the last row's time once a second row arrives.
        let mut summary = tx.prepare_cached(
            "INSERT INTO request_summary
                 (request_id, total_steps, think_steps, output_steps, model_id, started_at,
                  finished_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (request_id) DO UPDATE SET
                 total_steps = total_steps + ?2,
                 think_steps = think_steps + ?8,
                 output_steps = output_steps + ?9,
                 finished_at = ?10",
        )?;
        for (request_id, d) in &self.requests {
            let last = format_timestamp(d.last_us);
            summary.execute(params![
                request_id,
                d.rows,
                d.think - i64::from(d.first_is_think),
                d.output - i64::from(d.first_is_output),
                d.first_model_id,
                format_timestamp(d.first_us),
                (d.rows > 1).then_some(&last),
                d.think,
                d.output,
                last,
            ])?;
        }
        let mut zones = tx.prepare_cached(
            "INSERT INTO af_zone_hourly (hour, zone, count, confidence_sum, confidence_count)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (hour, zone) DO UPDATE SET
                 count = count + ?3,
                 confidence_sum = confidence_sum + ?4,
                 confidence_count = confidence_count + ?5",
        )?;
        for (&(hour, zone), &(count, sum, n)) in &self.zone_hours {
            zones.execute(params![hour, zone, count, sum, n])?;
        }
        let mut clusters = tx.prepare_cached(
            "INSERT INTO af_cluster_daily (day, cluster_id, count) VALUES (?1, ?2, ?3)
             ON CONFLICT (day, cluster_id) DO UPDATE SET count = count + ?3",
        )?;
        for (&(day, cluster), &count) in &self.cluster_days {
            clusters.execute(params![day, cluster, count])?;
        }
        let mut hours = tx.prepare_cached(
            "INSERT INTO af_hour_ids (hour, min_id, max_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (hour) DO UPDATE SET
                 min_id = min(min_id, ?2), max_id = max(max_id, ?3)",
        )?;
        for (&hour, &(lo, hi)) in &self.hour_ids {
            hours.execute(params![hour, lo, hi])?;
        }
        tx.execute(
            "UPDATE af_meta SET value = value + ?1 WHERE key = 'rows'",
            [self.inserted as i64],
        )?;
        if self.duplicates > 0 {
            tx.execute(
                "UPDATE af_meta SET value = value + ?1 WHERE key = 'duplicates_rejected'",
                [self.duplicates as i64],
            )?;
        }
        Ok(())
    }
}
