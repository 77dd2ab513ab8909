//! Reading rows back, as columns: the bindings turn them into numpy arrays and Arrow tables.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, ToSql};

use super::batch::{MAX_STEP, STEP_BITS};
use super::time::MICROS_PER_HOUR;

use crate::error::{CoreError, Result};
use crate::fingerprint::FINGERPRINT_DIM;

/// Which rows to read. Every filter is optional; times are unix microseconds, `since`
/// inclusive and `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub request_id: Option<String>,
    pub zone: Option<u8>,
    pub cluster_id: Option<i64>,
    pub layout: Option<u32>,
    pub limit: Option<u64>,
    /// Descending id order (the newest requests first; `limit` keeps those); else ascending.
    pub newest_first: bool,
}

/// Rows read from the store, one vector per column.
#[derive(Debug, Default)]
pub struct Rows {
    pub id: Vec<i64>,
    pub request_id: Vec<String>,
    pub step: Vec<i64>,
    pub session_id: Vec<Option<String>>,
    pub token_id: Vec<Option<i64>>,
    pub token_text: Vec<Option<String>>,
    pub think_phase: Vec<Option<u8>>,
    pub segment_idx: Vec<Option<i64>>,
    /// `len * 20` floats.
    pub fingerprint: Vec<f32>,
    pub zone: Vec<Option<u8>>,
    pub manifold_confidence: Vec<Option<f64>>,
    pub cluster_id: Vec<Option<i64>>,
    pub cluster_probability: Vec<Option<f64>>,
    pub router_entropy: Vec<Option<f64>>,
    pub expert_load_balance: Vec<Option<f64>>,
    pub sink_token_mass: Vec<Option<f64>>,
    pub top_k_positions: Vec<Option<Vec<u8>>>,
    pub top_k_scores: Vec<Option<Vec<u8>>>,
    pub capture_layer_ids: Vec<Option<Vec<u8>>>,
    pub top_expert_ids: Vec<Option<Vec<u8>>>,
    pub layout: Vec<u32>,
    pub model_id: Vec<Option<String>>,
    pub created_us: Vec<i64>,
    pub invalid: Vec<bool>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }
}

/// The columns of `Rows`, from `af_fingerprints f`; request key and step come from the id.
pub const SELECT_COLUMNS: &str = "f.id, f.session_id, f.token_id, f.token_text, f.think_phase, \
    f.segment_idx, f.fingerprint, f.zone, f.manifold_confidence, f.cluster_id, \
    f.cluster_probability, f.router_entropy, f.expert_load_balance, f.sink_token_mass, \
    f.top_k_positions, f.top_k_scores, f.capture_layer_ids, f.top_expert_ids, f.layout, \
    f.model_id, f.created_us, f.invalid";
/// Index of `created_us` in `SELECT_COLUMNS`.
pub const CREATED_COLUMN: usize = 20;
/// Index of `invalid` in `SELECT_COLUMNS`.
pub const INVALID_COLUMN: usize = 21;

/// Typed access to one row's values, without rusqlite's per-call conversions. A value of
/// the wrong type (written by another tool) is an error naming the row and column.
pub(super) struct Values<'r, 's> {
    pub row: &'r Row<'s>,
    pub id: i64,
}

impl Values<'_, '_> {
    pub(super) fn value(&self, i: usize) -> ValueRef<'_> {
        self.row.get_ref_unwrap(i)
    }

    pub(super) fn wrong(&self, i: usize, want: &str) -> CoreError {
        let name = SELECT_COLUMNS
            .split(',')
            .nth(i)
            .map(|c| c.trim().trim_start_matches("f."))
            .unwrap_or("?");
        CoreError::Store(format!("row id {}: column {name} is not {want}", self.id))
    }

    pub(super) fn int(&self, i: usize) -> Result<Option<i64>> {
        match self.value(i) {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(v) => Ok(Some(v)),
            _ => Err(self.wrong(i, "an integer")),
        }
    }

    pub(super) fn code(&self, i: usize) -> Result<Option<u8>> {
        self.int(i)?
            .map(|v| u8::try_from(v).map_err(|_| self.wrong(i, "a code from 0 to 255")))
            .transpose()
    }

    pub(super) fn real(&self, i: usize) -> Result<Option<f64>> {
        match self.value(i) {
            ValueRef::Null => Ok(None),
            ValueRef::Real(v) => Ok(Some(v)),
            ValueRef::Integer(v) => Ok(Some(v as f64)),
            _ => Err(self.wrong(i, "a number")),
        }
    }

    pub(super) fn text(&self, i: usize) -> Result<Option<String>> {
        match self.value(i) {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => Ok(Some(String::from_utf8_lossy(t).into_owned())),
            _ => Err(self.wrong(i, "text")),
        }
    }

    /// Text without a copy (invalid UTF-8, possible from other writers, is an error).
    pub(super) fn text_ref(&self, i: usize) -> Result<Option<&str>> {
        match self.value(i) {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => std::str::from_utf8(t)
                .map(Some)
                .map_err(|_| self.wrong(i, "UTF-8 text")),
            _ => Err(self.wrong(i, "text")),
        }
    }

    pub(super) fn flag(&self, i: usize) -> Result<bool> {
        Ok(self.int(i)?.ok_or_else(|| self.wrong(i, "0 or 1"))? != 0)
    }

    pub(super) fn blob(&self, i: usize) -> Result<Option<&[u8]>> {
        match self.value(i) {
            ValueRef::Null => Ok(None),
            ValueRef::Blob(b) => Ok(Some(b)),
            _ => Err(self.wrong(i, "a blob")),
        }
    }
}

/// Decodes a stored fingerprint blob into `out`, naming the row when it is malformed (rows
/// written by other tools through the seed's view are not checked on the way in).
pub fn decode_fingerprint(id: i64, blob: &[u8], out: &mut Vec<f32>) -> Result<()> {
    if blob.len() != FINGERPRINT_DIM * 4 {
        return Err(CoreError::Blob(format!(
            "fingerprint of row id {id} has {} bytes, expected {}",
            blob.len(),
            FINGERPRINT_DIM * 4
        )));
    }
    out.extend(
        blob.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
    Ok(())
}

impl Rows {
    pub fn push(&mut self, row: &Row<'_>, names: &mut RequestNames<'_>) -> Result<()> {
        let id: i64 = row.get(0)?;
        let v = Values { row, id };
        self.id.push(id);
        self.request_id
            .push(names.name(id >> STEP_BITS)?.to_owned());
        self.step.push(id & MAX_STEP);
        self.session_id.push(v.text(1)?);
        self.token_id.push(v.int(2)?);
        self.token_text.push(v.text(3)?);
        self.think_phase.push(v.code(4)?);
        self.segment_idx.push(v.int(5)?);
        let blob = v.blob(6)?.ok_or_else(|| v.wrong(6, "a blob"))?;
        decode_fingerprint(id, blob, &mut self.fingerprint)?;
        self.zone.push(v.code(7)?);
        self.manifold_confidence.push(v.real(8)?);
        self.cluster_id.push(v.int(9)?);
        self.cluster_probability.push(v.real(10)?);
        self.router_entropy.push(v.real(11)?);
        self.expert_load_balance.push(v.real(12)?);
        self.sink_token_mass.push(v.real(13)?);
        self.top_k_positions.push(v.blob(14)?.map(<[u8]>::to_vec));
        self.top_k_scores.push(v.blob(15)?.map(<[u8]>::to_vec));
        self.capture_layer_ids.push(v.blob(16)?.map(<[u8]>::to_vec));
        self.top_expert_ids.push(v.blob(17)?.map(<[u8]>::to_vec));
        let layout = v.int(18)?.ok_or_else(|| v.wrong(18, "a layout code"))?;
        self.layout
            .push(u32::try_from(layout).map_err(|_| v.wrong(18, "a layout code"))?);
        self.model_id.push(v.text(19)?);
        let created = v.int(20)?.ok_or_else(|| v.wrong(20, "a time"))?;
        self.created_us.push(created);
        self.invalid.push(v.flag(INVALID_COLUMN)?);
        Ok(())
    }
}

/// Request ids by key, for rows read in id order: a lookup only when the key changes.
pub struct RequestNames<'c> {
    lookup: rusqlite::CachedStatement<'c>,
    last: Option<(i64, String)>,
}

impl<'c> RequestNames<'c> {
    pub fn new(conn: &'c Connection) -> Result<Self> {
        Ok(Self {
            lookup: conn
                .prepare_cached("SELECT request_id FROM af_requests WHERE request_key = ?1")?,
            last: None,
        })
    }

    pub fn name(&mut self, key: i64) -> Result<&str> {
        if self.last.as_ref().is_none_or(|(k, _)| *k != key) {
            let name: String = self.lookup.query_row([key], |r| r.get(0)).map_err(|e| {
                CoreError::Store(format!("request key {key} has no request id: {e}"))
            })?;
            self.last = Some((key, name));
        }
        Ok(&self.last.as_ref().expect("set above").1)
    }
}

/// The id range that can hold rows matching `q`'s request and time filters, or `None` when no
/// row can match. Time filters use the hourly id ranges (`af_hour_ids`), so the range is a
/// superset: callers still check `created_us`.
pub fn candidate_ids(conn: &Connection, q: &Query) -> Result<Option<(i64, i64)>> {
    // The ids in use, one b-tree descent each. Two subqueries: SQLite answers a lone min() or
    // max() from the b-tree's ends, but scans the table for `SELECT min(id), max(id)`.
    let (first, last): (Option<i64>, Option<i64>) = conn.query_row(
        "SELECT (SELECT min(id) FROM af_fingerprints), (SELECT max(id) FROM af_fingerprints)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (Some(mut lo), Some(mut hi)) = (first, last) else {
        return Ok(None);
    };
    if let Some(request_id) = &q.request_id {
        let key: Option<i64> = conn
            .query_row(
                "SELECT request_key FROM af_requests WHERE request_id = ?1",
                [request_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(key) = key else { return Ok(None) };
        lo = lo.max(key << STEP_BITS);
        hi = hi.min((key << STEP_BITS) | MAX_STEP);
    }
    if let Some(since) = q.since_us {
        let first: Option<i64> = conn.query_row(
            "SELECT min(min_id) FROM af_hour_ids WHERE hour >= ?1",
            [since.div_euclid(MICROS_PER_HOUR)],
            |r| r.get(0),
        )?;
        let Some(first) = first else { return Ok(None) };
        lo = lo.max(first);
    }
    if let Some(until) = q.until_us {
        let last: Option<i64> = conn.query_row(
            "SELECT max(max_id) FROM af_hour_ids WHERE hour <= ?1",
            [(until - 1).div_euclid(MICROS_PER_HOUR)],
            |r| r.get(0),
        )?;
        let Some(last) = last else { return Ok(None) };
        hi = hi.min(last);
    }
    Ok((lo <= hi).then_some((lo, hi)))
}

/// The WHERE clause of `q`'s filters over ids `lo..=hi`, with its parameters.
fn conditions(q: &Query, lo: i64, hi: i64) -> (String, Vec<Box<dyn ToSql>>) {
    let mut conditions: Vec<&str> = vec!["f.id BETWEEN ? AND ?"];
    let mut params: Vec<Box<dyn ToSql>> = vec![Box::new(lo), Box::new(hi)];
    if let Some(v) = q.since_us {
        conditions.push("f.created_us >= ?");
        params.push(Box::new(v));
    }
    if let Some(v) = q.until_us {
        conditions.push("f.created_us < ?");
        params.push(Box::new(v));
    }
    if let Some(v) = q.zone {
        conditions.push("f.zone = ?");
        params.push(Box::new(v));
    }
    if let Some(v) = q.cluster_id {
        conditions.push("f.cluster_id = ?");
        params.push(Box::new(v));
    }
    if let Some(v) = q.layout {
        conditions.push("f.layout = ?");
        params.push(Box::new(v));
    }
    (conditions.join(" AND "), params)
}

/// Rows matching `q`'s filters, its limit aside.
pub fn count(conn: &Connection, q: &Query) -> Result<u64> {
    let Some((lo, hi)) = candidate_ids(conn, q)? else {
        return Ok(0);
    };
    let (filter, params) = conditions(q, lo, hi);
    let n: i64 = conn.query_row(
        &format!("SELECT count(*) FROM af_fingerprints f WHERE {filter}"),
        rusqlite::params_from_iter(params.iter()),
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// Runs a query. Parameterised SQL only: filters become `?` placeholders. Rows come in id
/// order: grouped by request (in the order requests first arrived), steps ascending.
pub fn read(conn: &Connection, q: &Query) -> Result<Rows> {
    let mut out = Rows::default();
    let Some((lo, hi)) = candidate_ids(conn, q)? else {
        return Ok(out);
    };
    let (filter, mut params) = conditions(q, lo, hi);
    let direction = if q.newest_first { "DESC" } else { "ASC" };
    let mut sql = format!(
        "SELECT {SELECT_COLUMNS} FROM af_fingerprints f WHERE {filter} ORDER BY f.id {direction}"
    );
    if let Some(limit) = q.limit {
        sql += " LIMIT ?";
        params.push(Box::new(limit.min(i64::MAX as u64) as i64));
    }
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
    let mut names = RequestNames::new(conn)?;
    while let Some(row) = rows.next()? {
        out.push(row, &mut names)?;
    }
    Ok(out)
}

/// One read-only statement (a write is refused before it runs), all rows.
pub fn sql(
    conn: &Connection,
    sql: &str,
    params: &[rusqlite::types::Value],
) -> Result<(Vec<String>, Vec<Vec<rusqlite::types::Value>>)> {
    let mut stmt = conn
        .prepare(sql)
        .map_err(|e| CoreError::Invalid(format!("SQL: {e}")))?;
    if !stmt.readonly() {
        return Err(CoreError::Invalid(
            "store.sql runs read-only statements; write with append()".into(),
        ));
    }
    let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
    let width = names.len();
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params.iter()), |row| {
            (0..width).map(|i| row.get(i)).collect()
        })
        .map_err(|e| CoreError::Invalid(format!("SQL: {e}")))?
        .collect::<rusqlite::Result<Vec<Vec<_>>>>()?;
    Ok((names, rows))
}
