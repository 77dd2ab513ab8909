//! `request_summary`, the hourly and daily counts and the hourly id ranges: what every write
//! path keeps besides the rows.
//!
//! A request's summary is derived from `af_request_stats` (counts and sums) and its cluster
//! and expert tallies by one statement, [`refresh_sql`], that the writer and the triggers
//! share; they differ only in how they keep the stats. Counts and sums are added and
//! subtracted. What depends on step order is kept from a row's neighbours: a cluster
//! transition is two consecutive steps with different clusters (both assigned, >= 0), an
//! expert switch two consecutive steps whose first expert differs, and the preview is the
//! token texts of the first 500 steps. The writer handles the usual case, steps appended
//! after the request's last stored step, in one pass, and recomputes a request's order-
//! dependent columns when a batch lands among its stored steps.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction, params};

use super::batch::STEP_BITS;
use super::time::{MICROS_PER_DAY, MICROS_PER_HOUR};
use super::vectors::summary_fields;
use crate::error::Result;
use crate::layout::Layout;

/// Steps in a preview, and characters.
pub const PREVIEW_STEPS: i64 = 500;
pub const PREVIEW_CHARS: usize = 500;

/// The id range of request `k` (an SQL expression), for `WHERE id BETWEEN`.
pub fn id_range(k: &str) -> (String, String) {
    (
        format!("(({k}) * 16777216)"),
        format!("(({k}) * 16777216 + 16777215)"),
    )
}

/// Creates request `k`'s summary row if it has none. The first row's session id goes in
/// with it, so that the seed's `update_session_on_request` trigger counts the request.
pub fn ensure_sql(k: &str) -> String {
    let (lo, hi) = id_range(k);
    format!(
        "INSERT INTO request_summary (request_id, total_steps, session_id)
         SELECT r.request_id, 0, (SELECT session_id FROM af_fingerprints
             WHERE id BETWEEN {lo} AND {hi} ORDER BY id LIMIT 1)
         FROM af_requests r WHERE r.request_key = {k}
         ON CONFLICT (request_id) DO NOTHING;"
    )
}

/// Recomputes request `k`'s summary columns from its stats, tallies and first and last rows.
/// Departures from the seed's trigger (docs/store.md): every row counts in the phase counts,
/// zone shares and means are filled (rows without a zone count as unknown), `finished_at` is
/// the last step's time from the first row on.
pub fn refresh_sql(k: &str) -> String {
    let (lo, hi) = id_range(k);
    let time = "strftime('%Y-%m-%d %H:%M:%S', created_us / 1000000, 'unixepoch')";
    format!(
        "UPDATE request_summary SET
            (total_steps, think_steps, output_steps, syntax_floor_pct, semantic_bridge_pct,
             structure_ripple_pct, unknown_pct, dominant_zone, mean_entropy, mean_local_mass,
             mean_long_mass, expert_entropy_mean, expert_switch_count, cluster_transitions,
             response_preview) = (
                SELECT row_count, think, output, 100.0 * zone0 / row_count,
                    100.0 * zone1 / row_count, 100.0 * zone2 / row_count,
                    100.0 * zone3 / row_count,
                    CASE WHEN zone0 >= max(zone1, zone2, zone3) THEN 'syntax_floor'
                         WHEN zone1 >= max(zone2, zone3) THEN 'semantic_bridge'
                         WHEN zone2 >= zone3 THEN 'structure_ripple' ELSE 'unknown' END,
                    entropy_sum / NULLIF(measured, 0), local_sum / NULLIF(measured, 0),
                    long_sum / NULLIF(measured, 0), router_sum / NULLIF(router_count, 0),
                    expert_switches, cluster_transitions, NULLIF(preview, '')
                FROM af_request_stats WHERE request_key = {k}),
            unique_experts_used = (SELECT count(*) FROM af_request_experts
                WHERE request_key = {k} AND count > 0),
            dominant_cluster_id = coalesce((SELECT cluster_id FROM af_request_clusters
                WHERE request_key = {k} AND count > 0 ORDER BY count DESC, cluster_id LIMIT 1), -1),
            (session_id, model_id, started_at) = (SELECT session_id, model_id, {time}
                FROM af_fingerprints WHERE id BETWEEN {lo} AND {hi} ORDER BY id LIMIT 1),
            finished_at = (SELECT {time} FROM af_fingerprints
                WHERE id BETWEEN {lo} AND {hi} ORDER BY id DESC LIMIT 1)
         WHERE request_id = (SELECT request_id FROM af_requests WHERE request_key = {k});"
    )
}

/// Recomputes request `k`'s preview from its first steps; `when` narrows it (`AND ...`).
pub fn preview_sql(k: &str, when: &str) -> String {
    let (lo, hi) = id_range(k);
    // The ordered subquery has a LIMIT, so SQLite does not flatten it into the aggregate and
    // group_concat sees the rows in step order.
    format!(
        "UPDATE af_request_stats SET (preview, preview_rows, preview_end) = (
            SELECT substr(coalesce(group_concat(t, ''), ''), 1, {PREVIEW_CHARS}), count(*),
                   coalesce(max(id), -1)
            FROM (SELECT id, coalesce(token_text, '') AS t FROM af_fingerprints
                  WHERE id BETWEEN {lo} AND {hi} ORDER BY id LIMIT {PREVIEW_STEPS}))
         WHERE request_key = {k} {when};"
    )
}

/// Whether two consecutive steps count as a cluster transition.
fn transition(a: Option<i64>, b: Option<i64>) -> i64 {
    matches!((a, b), (Some(a), Some(b)) if a >= 0 && b >= 0 && a != b) as i64
}

/// Whether two consecutive steps count as an expert switch (their first experts differ).
fn switch(a: Option<i32>, b: Option<i32>) -> i64 {
    matches!((a, b), (Some(a), Some(b)) if a != b) as i64
}

/// The first expert of a stored `top_expert_ids` blob.
fn first_expert(blob: Option<&[u8]>) -> Option<i32> {
    blob.filter(|b| b.len() >= 4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Counts and sums of some rows of one request: the columns of `af_request_stats` that are
/// added to.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    rows: i64,
    think: i64,
    output: i64,
    zones: [i64; 4],
    measured: i64,
    local: f64,
    long: f64,
    entropy: f64,
    router_count: i64,
    router_sum: f64,
}

/// One row as the summaries see it.
pub struct SummaryRow<'a> {
    pub id: i64,
    pub phase: Option<u8>,
    pub zone: Option<u8>,
    pub confidence: Option<f64>,
    pub cluster_id: Option<i64>,
    pub created_us: i64,
    pub layout: Layout,
    pub invalid: bool,
    pub fingerprint: &'a [f32],
    pub router_entropy: Option<f64>,
    pub experts: &'a [i32],
    pub token_text: Option<&'a str>,
}

impl Counts {
    fn add(&mut self, r: &SummaryRow<'_>) {
        self.rows += 1;
        self.think += i64::from(r.phase == Some(0));
        self.output += i64::from(r.phase == Some(1));
        self.zones[usize::from(r.zone.unwrap_or(3).min(3))] += 1;
        if !r.invalid {
            let (local, long, entropy) = summary_fields(r.layout, r.fingerprint);
            self.measured += 1;
            self.local += local;
            self.long += long;
            self.entropy += entropy;
        }
        if let Some(e) = r.router_entropy {
            self.router_count += 1;
            self.router_sum += e;
        }
    }
}

/// A new row as the order-dependent columns see it: id, cluster, first expert, token text.
type OrderedRow<'a> = (i64, Option<i64>, Option<i32>, Option<&'a str>);

/// What one transaction adds for one request.
#[derive(Default)]
struct RequestDelta<'a> {
    counts: Counts,
    clusters: HashMap<i64, i64>,
    experts: HashMap<i32, i64>,
    rows: Vec<OrderedRow<'a>>,
}

/// The last stored row of a request before a transaction: its id, cluster and first expert.
pub type LastRow = (i64, Option<i64>, Option<i32>);

/// Reads request `key`'s last stored row.
pub fn last_row(tx: &Transaction<'_>, key: i64) -> Result<Option<LastRow>> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, cluster_id, top_expert_ids FROM af_fingerprints
         WHERE id BETWEEN ?1 AND ?2 ORDER BY id DESC LIMIT 1",
    )?;
    let lo = key << STEP_BITS;
    Ok(stmt
        .query_row(params![lo, lo | ((1 << STEP_BITS) - 1)], |r| {
            let blob: Option<Vec<u8>> = r.get(2)?;
            Ok((r.get(0)?, r.get(1)?, first_expert(blob.as_deref())))
        })
        .optional()?)
}

/// Everything one writer transaction adds besides its rows, accumulated while rows are
/// inserted and written once before the commit.
#[derive(Default)]
pub struct Deltas<'a> {
    requests: HashMap<i64, RequestDelta<'a>>,
    zone_hours: HashMap<(i64, u8), (i64, f64, i64)>,
    cluster_days: HashMap<(i64, i64), i64>,
    hour_ids: HashMap<i64, (i64, i64)>,
    layouts: HashMap<u32, i64>,
    pub inserted: u64,
    pub invalid: u64,
    pub duplicates: u64,
}

impl<'a> Deltas<'a> {
    pub fn add(&mut self, row: SummaryRow<'a>) {
        self.inserted += 1;
        self.invalid += u64::from(row.invalid);
        *self.layouts.entry(row.layout.code()).or_default() += 1;
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
        let cluster = row.cluster_id.filter(|&c| c >= 0);
        if let Some(c) = cluster {
            *self
                .cluster_days
                .entry((row.created_us.div_euclid(MICROS_PER_DAY), c))
                .or_default() += 1;
        }
        let d = self.requests.entry(row.id >> STEP_BITS).or_default();
        d.counts.add(&row);
        if let Some(c) = cluster {
            *d.clusters.entry(c).or_default() += 1;
        }
        for &e in row.experts {
            *d.experts.entry(e).or_default() += 1;
        }
        d.rows.push((
            row.id,
            row.cluster_id,
            row.experts.first().copied(),
            row.token_text,
        ));
    }

    /// Writes everything in `tx`. `last` holds each touched request's last row as it was
    /// before the transaction's inserts.
    pub fn write(
        &mut self,
        tx: &Transaction<'_>,
        last: &HashMap<i64, Option<LastRow>>,
    ) -> Result<()> {
        for (&key, d) in &mut self.requests {
            write_request(tx, key, d, last.get(&key).copied().flatten())?;
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
        let mut meta = tx.prepare_cached(
            "INSERT INTO af_meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = value + ?2",
        )?;
        meta.execute(params!["rows", self.inserted as i64])?;
        for (code, n) in &self.layouts {
            meta.execute(params![format!("rows_layout:{code}"), n])?;
        }
        for (key, n) in [
            ("invalid_rows", self.invalid),
            ("duplicates_rejected", self.duplicates),
        ] {
            if n > 0 {
                meta.execute(params![key, n as i64])?;
            }
        }
        Ok(())
    }
}

fn add_counts(tx: &Transaction<'_>, key: i64, c: &Counts) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO af_request_stats (request_key, row_count, think, output, zone0, zone1, zone2,
             zone3, measured, local_sum, long_sum, entropy_sum, router_count, router_sum)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (request_key) DO UPDATE SET
             row_count = row_count + ?2, think = think + ?3, output = output + ?4, zone0 = zone0 + ?5,
             zone1 = zone1 + ?6, zone2 = zone2 + ?7, zone3 = zone3 + ?8,
             measured = measured + ?9, local_sum = local_sum + ?10, long_sum = long_sum + ?11,
             entropy_sum = entropy_sum + ?12, router_count = router_count + ?13,
             router_sum = router_sum + ?14",
    )?;
    stmt.execute(params![
        key,
        c.rows,
        c.think,
        c.output,
        c.zones[0],
        c.zones[1],
        c.zones[2],
        c.zones[3],
        c.measured,
        c.local,
        c.long,
        c.entropy,
        c.router_count,
        c.router_sum
    ])?;
    Ok(())
}

fn add_tallies(
    tx: &Transaction<'_>,
    key: i64,
    clusters: &HashMap<i64, i64>,
    experts: &HashMap<i32, i64>,
) -> Result<()> {
    let mut c = tx.prepare_cached(
        "INSERT INTO af_request_clusters (request_key, cluster_id, count) VALUES (?1, ?2, ?3)
         ON CONFLICT (request_key, cluster_id) DO UPDATE SET count = count + ?3",
    )?;
    for (cluster, n) in clusters {
        c.execute(params![key, cluster, n])?;
    }
    let mut e = tx.prepare_cached(
        "INSERT INTO af_request_experts (request_key, expert_id, count) VALUES (?1, ?2, ?3)
         ON CONFLICT (request_key, expert_id) DO UPDATE SET count = count + ?3",
    )?;
    for (expert, n) in experts {
        e.execute(params![key, expert, n])?;
    }
    Ok(())
}

/// Transitions and switches along rows in step order, starting after `before`.
fn order_counts<'r>(
    before: Option<(Option<i64>, Option<i32>)>,
    rows: impl Iterator<Item = (Option<i64>, Option<i32>)> + 'r,
) -> (i64, i64) {
    let (mut transitions, mut switches) = (0, 0);
    let mut prev = before;
    for (cluster, expert) in rows {
        if let Some((c, e)) = prev {
            transitions += transition(c, cluster);
            switches += switch(e, expert);
        }
        prev = Some((cluster, expert));
    }
    (transitions, switches)
}

fn write_request(
    tx: &Transaction<'_>,
    key: i64,
    d: &mut RequestDelta<'_>,
    last: Option<LastRow>,
) -> Result<()> {
    add_counts(tx, key, &d.counts)?;
    add_tallies(tx, key, &d.clusters, &d.experts)?;
    d.rows.sort_unstable_by_key(|r| r.0);
    let first_new = d.rows[0].0;
    let appended = last.is_none_or(|(id, _, _)| first_new > id);
    let (preview, preview_rows, preview_end): (String, i64, i64) = tx
        .prepare_cached(
            "SELECT preview, preview_rows, preview_end FROM af_request_stats
             WHERE request_key = ?1",
        )?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    if appended {
        let before = last.map(|(_, c, e)| (c, e));
        let (t, s) = order_counts(before, d.rows.iter().map(|r| (r.1, r.2)));
        let mut preview = preview;
        let mut preview_rows = preview_rows;
        let mut preview_end = preview_end;
        let room = (PREVIEW_STEPS - preview_rows).max(0) as usize;
        for &(id, _, _, text) in d.rows.iter().take(room) {
            preview.push_str(text.unwrap_or(""));
            preview_rows += 1;
            preview_end = id;
        }
        if let Some((cut, _)) = preview.char_indices().nth(PREVIEW_CHARS) {
            preview.truncate(cut);
        }
        tx.prepare_cached(
            "UPDATE af_request_stats SET cluster_transitions = cluster_transitions + ?2,
                 expert_switches = expert_switches + ?3, preview = ?4, preview_rows = ?5,
                 preview_end = ?6
             WHERE request_key = ?1",
        )?
        .execute(params![key, t, s, preview, preview_rows, preview_end])?;
    } else {
        // New rows among stored ones: recount the order-dependent columns of this request.
        let lo = key << STEP_BITS;
        let mut stmt = tx.prepare_cached(
            "SELECT cluster_id, top_expert_ids FROM af_fingerprints
             WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
        )?;
        let steps = stmt
            .query_map(params![lo, lo | ((1 << STEP_BITS) - 1)], |r| {
                let blob: Option<Vec<u8>> = r.get(1)?;
                Ok((r.get::<_, Option<i64>>(0)?, first_expert(blob.as_deref())))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let (t, s) = order_counts(None, steps.into_iter());
        tx.prepare_cached(
            "UPDATE af_request_stats SET cluster_transitions = ?2, expert_switches = ?3
             WHERE request_key = ?1",
        )?
        .execute(params![key, t, s])?;
        if first_new <= preview_end {
            tx.prepare_cached(&preview_sql("?1", ""))?.execute([key])?;
        }
    }
    let created = tx.prepare_cached(&ensure_sql("?1"))?.execute([key])? == 1;
    tx.prepare_cached(&refresh_sql("?1"))?.execute([key])?;
    if created {
        // What the seed's `update_session_on_request` trigger does for a new summary with a
        // session; triggers are off on the connections that get here.
        tx.prepare_cached(
            "UPDATE sessions SET request_count = request_count + 1,
                 updated_at = CURRENT_TIMESTAMP
             WHERE session_id = (SELECT session_id FROM request_summary WHERE request_id =
                 (SELECT request_id FROM af_requests WHERE request_key = ?1))",
        )?
        .execute([key])?;
    }
    Ok(())
}

/// Recomputes every request's stats, tallies and summary from the stored rows (a seed
/// database just converted, an upgrade from physical schema 1), in one pass in id order.
pub fn rebuild(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(
        "DELETE FROM af_request_stats; DELETE FROM af_request_clusters;
         DELETE FROM af_request_experts;",
    )?;
    let mut stmt = tx.prepare(
        "SELECT id, think_phase, zone, cluster_id, layout, invalid, fingerprint, router_entropy,
                top_expert_ids, token_text, created_us
         FROM af_fingerprints ORDER BY id",
    )?;
    let mut rows = stmt.query([])?;
    // The rows of the request being read, owned (the cursor reuses its buffers).
    struct Owned {
        id: i64,
        phase: Option<u8>,
        zone: Option<u8>,
        cluster: Option<i64>,
        layout: Layout,
        invalid: bool,
        fp: Vec<f32>,
        router: Option<f64>,
        experts: Vec<i32>,
        text: Option<String>,
        created: i64,
    }
    let mut current: Vec<Owned> = Vec::new();
    let flush = |current: &mut Vec<Owned>| -> Result<()> {
        let Some(first) = current.first() else {
            return Ok(());
        };
        let key = first.id >> STEP_BITS;
        let mut d = RequestDelta::default();
        for r in current.iter() {
            let row = SummaryRow {
                id: r.id,
                phase: r.phase,
                zone: r.zone,
                confidence: None,
                cluster_id: r.cluster,
                created_us: r.created,
                layout: r.layout,
                invalid: r.invalid,
                fingerprint: &r.fp,
                router_entropy: r.router,
                experts: &r.experts,
                token_text: r.text.as_deref(),
            };
            d.counts.add(&row);
            if let Some(c) = r.cluster.filter(|&c| c >= 0) {
                *d.clusters.entry(c).or_default() += 1;
            }
            for &e in &r.experts {
                *d.experts.entry(e).or_default() += 1;
            }
            d.rows.push((
                r.id,
                r.cluster,
                r.experts.first().copied(),
                r.text.as_deref(),
            ));
        }
        write_request(tx, key, &mut d, None)?;
        current.clear();
        Ok(())
    };
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        if current
            .first()
            .is_some_and(|f| f.id >> STEP_BITS != id >> STEP_BITS)
        {
            flush(&mut current)?;
        }
        let blob: Vec<u8> = r.get(6)?;
        let experts: Option<Vec<u8>> = r.get(8)?;
        let code: u32 = r.get(4)?;
        current.push(Owned {
            id,
            phase: r.get(1)?,
            zone: r.get(2)?,
            cluster: r.get(3)?,
            layout: Layout::from_code(code)?,
            invalid: r.get::<_, i64>(5)? != 0,
            fp: blob
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            router: r.get(7)?,
            experts: experts
                .unwrap_or_default()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            text: r.get(9)?,
            created: r.get(10)?,
        });
    }
    flush(&mut current)?;
    Ok(())
}
