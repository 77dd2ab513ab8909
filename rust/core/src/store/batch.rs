//! A batch of rows on its way to the writer: columns, checked in the caller's thread so that
//! bad input fails at `append` (naming the row) instead of later in the background.

use super::checks::MAX_EXPERT_IDS;
use super::vectors;
use crate::error::{CoreError, Result};
use crate::fingerprint::FINGERPRINT_DIM;
use crate::layout::Layout;
use crate::zone::{Zone, zone_of};

/// The list rules of one row, from its lists' lengths (0 for none): one top-k score per
/// position, at most `MAX_EXPERT_IDS` experts. Shared by batches and by decoded messages,
/// which are refused one by one; `at` names the row, only when there is an error to name it in.
pub fn list_lengths(
    at: impl Fn() -> String,
    positions: usize,
    scores: usize,
    experts: usize,
) -> Result<()> {
    if positions != scores && positions > 0 && scores > 0 {
        return Err(CoreError::Shape(format!(
            "{}top_k_positions has {positions} entries but top_k_scores has {scores}; they \
             pair up",
            at()
        )));
    }
    if experts > MAX_EXPERT_IDS {
        return Err(CoreError::Invalid(format!(
            "{}top_expert_ids has {experts} entries; at most {MAX_EXPERT_IDS} are stored",
            at()
        )));
    }
    Ok(())
}

/// Codes of the seed's `think_phase` values, in the order of its CHECK.
pub const THINK_PHASES: [&str; 3] = ["think", "output", "unknown"];

/// A text column: one value for every row (a model id), or one per row.
#[derive(Debug, Clone)]
pub enum TextColumn {
    Same(String),
    Rows(Vec<Option<String>>),
}

impl TextColumn {
    pub fn get(&self, row: usize) -> Option<&str> {
        match self {
            TextColumn::Same(s) => Some(s),
            TextColumn::Rows(v) => v[row].as_deref(),
        }
    }

    fn len(&self) -> Option<usize> {
        match self {
            TextColumn::Same(_) => None,
            TextColumn::Rows(v) => Some(v.len()),
        }
    }
}

/// A list per row (top-k positions, layer ids), Arrow style: row `i` is
/// `values[offsets[i]..offsets[i + 1]]`; an empty row is NULL.
#[derive(Debug, Clone, Default)]
pub struct ListColumn<T> {
    pub offsets: Vec<usize>,
    pub values: Vec<T>,
}

impl<T: Copy> ListColumn<T> {
    pub fn row(&self, i: usize) -> &[T] {
        &self.values[self.offsets[i]..self.offsets[i + 1]]
    }

    fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

/// One batch of rows. `fingerprints` holds `rows * 20` floats; optional columns are `None`
/// when absent (the schema default applies), floats use NaN for NULL, codes use `NULL_CODE`.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The distinct request ids of the batch; `request_index[row]` points into it.
    pub request_ids: Vec<String>,
    pub request_index: Vec<u32>,
    pub steps: Vec<i64>,
    pub fingerprints: Vec<f32>,
    pub layout: Layout,
    /// Unix microseconds; filled with the append time when the caller gives none.
    pub created_us: Vec<i64>,
    pub session_id: Option<TextColumn>,
    pub token_id: Option<Vec<Option<i64>>>,
    pub token_text: Option<TextColumn>,
    pub think_phase: Option<Vec<u8>>,
    pub segment_idx: Option<Vec<Option<i64>>>,
    /// Zone codes; computed from v1 fingerprints by the seed's rules when the caller gives none.
    pub zone: Option<Vec<u8>>,
    pub manifold_confidence: Option<Vec<f64>>,
    pub cluster_id: Option<Vec<Option<i64>>>,
    pub cluster_probability: Option<Vec<f64>>,
    pub router_entropy: Option<Vec<f64>>,
    pub expert_load_balance: Option<Vec<f64>>,
    pub sink_token_mass: Option<Vec<f64>>,
    pub model_id: Option<TextColumn>,
    pub top_k_positions: Option<ListColumn<i32>>,
    pub top_k_scores: Option<ListColumn<f32>>,
    pub capture_layer_ids: Option<ListColumn<i32>>,
    pub top_expert_ids: Option<ListColumn<i32>>,
    /// Rows the caller says break their layout's rules (exported as such, or written by the
    /// seed's tools): stored flagged, with zone unknown, without the value checks. Every other
    /// row must pass them. After `validate`, one flag per row.
    pub invalid: Option<Vec<bool>>,
}

/// Steps live in the low 24 bits of a row's id (`request_key * 2^24 + step`).
pub const STEP_BITS: u32 = 24;
pub const MAX_STEP: i64 = (1 << STEP_BITS) - 1;

/// The id of a row: unique per `(request, step)`, and a request's rows are one id range.
pub fn row_id(request_key: i64, step: i64) -> i64 {
    (request_key << STEP_BITS) | step
}

/// The code of a NULL zone or phase.
pub const NULL_CODE: u8 = u8::MAX;

fn invalid(msg: String) -> CoreError {
    CoreError::Invalid(msg)
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.steps.len()
    }

    /// Checks every column against the row count and the schema's rules, and fills the
    /// derived columns (times, zones). Errors name the column and the first bad row.
    pub fn validate(&mut self, now_us: i64) -> Result<()> {
        let n = self.rows();
        let lens = [
            ("request_ids", self.request_index.len()),
            ("fingerprints", self.fingerprints.len() / FINGERPRINT_DIM),
        ];
        for (name, len) in lens {
            if len != n {
                return Err(CoreError::Shape(format!(
                    "{name} has {len} rows but steps has {n}"
                )));
            }
        }
        if self.fingerprints.len() % FINGERPRINT_DIM != 0 {
            return Err(CoreError::Shape(format!(
                "fingerprints must be rows of {FINGERPRINT_DIM} floats, got {} values",
                self.fingerprints.len()
            )));
        }
        if let Some(i) = self.request_ids.iter().position(|r| r.is_empty()) {
            let row = self.request_index.iter().position(|&x| x as usize == i);
            return Err(invalid(format!(
                "request_id of row {} is empty",
                row.unwrap_or(0)
            )));
        }
        if let Some(row) = self
            .request_index
            .iter()
            .position(|&i| i as usize >= self.request_ids.len())
        {
            return Err(invalid(format!(
                "request index of row {row} is out of range"
            )));
        }
        if let Some(row) = self
            .steps
            .iter()
            .position(|&s| !(0..=MAX_STEP).contains(&s))
        {
            return Err(invalid(format!(
                "step of row {row} is {}; steps must be from 0 to {MAX_STEP}",
                self.steps[row]
            )));
        }
        self.check_lengths(n)?;
        self.check_vectors(n)?;
        self.check_lists()?;
        if let Some(codes) = &self.think_phase
            && let Some(row) = codes
                .iter()
                .position(|&c| c != NULL_CODE && c as usize >= THINK_PHASES.len())
        {
            return Err(invalid(format!("think_phase code of row {row} is unknown")));
        }
        if let Some(codes) = &self.zone
            && let Some(row) = codes
                .iter()
                .position(|&c| c != NULL_CODE && c as usize >= Zone::ALL.len())
        {
            return Err(invalid(format!("zone code of row {row} is unknown")));
        }
        if self.created_us.is_empty() {
            self.created_us = vec![now_us; n];
        }
        if self.layout == Layout::V1 {
            self.fill_zones();
        }
        self.mark_invalid();
        Ok(())
    }

    /// Every row not flagged invalid must be a vector of the batch's layout.
    fn check_vectors(&self, n: usize) -> Result<()> {
        let flags = self.invalid.as_deref();
        for (r, fp) in self.fingerprints.chunks_exact(FINGERPRINT_DIM).enumerate() {
            if flags.is_some_and(|f| f[r]) {
                continue;
            }
            if let Some(problem) = vectors::problem(self.layout, fp) {
                let hint = match self.layout {
                    Layout::V1 => {
                        "; if it is the SGLang server's vector, store it with layout sglang"
                    }
                    Layout::Sglang => "",
                };
                let msg = format!(
                    "fingerprint of row {r} is not a {} vector: it {problem}{hint}",
                    self.layout.name()
                );
                return Err(if fp.iter().all(|v| v.is_finite()) {
                    CoreError::Invalid(msg)
                } else {
                    CoreError::Blob(msg)
                });
            }
        }
        debug_assert!(flags.is_none_or(|f| f.len() == n));
        Ok(())
    }

    /// What the readers and the view's rules need of the lists: `list_lengths` per row, and
    /// finite scores.
    fn check_lists(&self) -> Result<()> {
        fn len<T: Copy>(c: &Option<ListColumn<T>>, row: usize) -> usize {
            c.as_ref().map_or(0, |c| c.row(row).len())
        }
        for row in 0..self.rows() {
            list_lengths(
                || format!("row {row}: "),
                len(&self.top_k_positions, row),
                len(&self.top_k_scores, row),
                len(&self.top_expert_ids, row),
            )?;
        }
        if let Some(s) = &self.top_k_scores
            && let Some(row) = (0..s.rows()).find(|&r| s.row(r).iter().any(|v| !v.is_finite()))
        {
            return Err(CoreError::Invalid(format!(
                "top_k_scores of row {row} holds a value that is not finite"
            )));
        }
        Ok(())
    }

    /// Flagged rows carry zone unknown and no confidence; every row gets a flag.
    fn mark_invalid(&mut self) {
        let n = self.rows();
        let flags = self.invalid.get_or_insert_with(|| vec![false; n]);
        if !flags.iter().any(|&f| f) {
            return;
        }
        let zones = self.zone.get_or_insert_with(|| vec![NULL_CODE; n]);
        let confidences = self
            .manifold_confidence
            .get_or_insert_with(|| vec![f64::NAN; n]);
        for (row, _) in flags.iter().enumerate().filter(|(_, f)| **f) {
            zones[row] = Zone::Unknown as u8;
            confidences[row] = f64::NAN;
        }
    }

    fn check_lengths(&self, n: usize) -> Result<()> {
        let mut lens: Vec<(&str, Option<usize>)> = vec![
            (
                "created_at",
                (!self.created_us.is_empty()).then_some(self.created_us.len()),
            ),
            (
                "session_id",
                self.session_id.as_ref().and_then(TextColumn::len),
            ),
            (
                "token_text",
                self.token_text.as_ref().and_then(TextColumn::len),
            ),
            ("model_id", self.model_id.as_ref().and_then(TextColumn::len)),
            ("token_id", self.token_id.as_ref().map(Vec::len)),
            ("think_phase", self.think_phase.as_ref().map(Vec::len)),
            ("segment_idx", self.segment_idx.as_ref().map(Vec::len)),
            ("manifold_zone", self.zone.as_ref().map(Vec::len)),
            ("cluster_id", self.cluster_id.as_ref().map(Vec::len)),
            ("invalid", self.invalid.as_ref().map(Vec::len)),
            (
                "top_k_positions",
                self.top_k_positions.as_ref().map(ListColumn::rows),
            ),
            (
                "top_k_scores",
                self.top_k_scores.as_ref().map(ListColumn::rows),
            ),
            (
                "capture_layer_ids",
                self.capture_layer_ids.as_ref().map(ListColumn::rows),
            ),
            (
                "top_expert_ids",
                self.top_expert_ids.as_ref().map(ListColumn::rows),
            ),
        ];
        for (name, col) in [
            ("manifold_confidence", &self.manifold_confidence),
            ("cluster_probability", &self.cluster_probability),
            ("router_entropy", &self.router_entropy),
            ("expert_load_balance", &self.expert_load_balance),
            ("sink_token_mass", &self.sink_token_mass),
        ] {
            lens.push((name, col.as_ref().map(Vec::len)));
        }
        for (name, len) in lens {
            if let Some(len) = len
                && len != n
            {
                return Err(CoreError::Shape(format!(
                    "{name} has {len} rows but steps has {n}"
                )));
            }
        }
        Ok(())
    }

    /// The seed's rule-based zone for each v1 row given none, and its confidence unless one
    /// is given (flagged rows get theirs from `mark_invalid`).
    fn fill_zones(&mut self) {
        let n = self.rows();
        let zones = self.zone.get_or_insert_with(|| vec![NULL_CODE; n]);
        let confidences = self
            .manifold_confidence
            .get_or_insert_with(|| vec![f64::NAN; n]);
        for (row, fp) in self.fingerprints.chunks_exact(FINGERPRINT_DIM).enumerate() {
            if zones[row] != NULL_CODE || fp.iter().any(|v| !v.is_finite()) {
                continue;
            }
            let (zone, confidence) = zone_of(fp.try_into().expect("rows of 20"));
            zones[row] = zone as u8;
            if confidences[row].is_nan() {
                confidences[row] = f64::from(confidence);
            }
        }
    }
}
