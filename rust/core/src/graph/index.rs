//! The inverted index: for every component key, the roaring bitmap of the prompts where it is
//! active. Queries combine keys with AND or OR and take away the prompts of NOT keys.
//!
//! The index is a cache of the `component_activations` table (the source of truth that plain
//! SQL reads). Python feeds it rows as they are written or read back, persists the bitmaps of
//! the keys that changed, and rebuilds it when the table no longer matches (rows written by the
//! seed's code, a deletion).

use std::collections::{HashMap, HashSet};

use roaring::{MultiOps, RoaringBitmap};

use crate::{CoreError, Result};

/// How the included keys combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Prompts where every key is active.
    All,
    /// Prompts where at least one key is active.
    Any,
}

impl Mode {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "all" => Ok(Mode::All),
            "any" => Ok(Mode::Any),
            _ => Err(CoreError::Invalid(format!(
                "mode must be 'all' or 'any', not {name:?}"
            ))),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ComponentIndex {
    ids: HashMap<String, u32>,
    keys: Vec<String>,
    prompts: Vec<RoaringBitmap>,
    /// Keys whose bitmap changed since the last `take_dirty`.
    dirty: HashSet<u32>,
    /// Rows added (a key on a prompt counts once however often it is added).
    rows: u64,
}

/// A prompt id as a bitmap entry: prompt ids are SQLite rowids, positive and in practice far
/// below 2^32; anything else is refused rather than silently wrapped.
pub fn prompt_entry(id: i64) -> Result<u32> {
    u32::try_from(id)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| CoreError::Invalid(format!("prompt id {id} is outside 1..2^32")))
}

impl ComponentIndex {
    pub fn new() -> Self {
        Self::default()
    }

    fn id_of(&mut self, key: &str) -> u32 {
        if let Some(&i) = self.ids.get(key) {
            return i;
        }
        let i = self.keys.len() as u32;
        self.ids.insert(key.to_string(), i);
        self.keys.push(key.to_string());
        self.prompts.push(RoaringBitmap::new());
        i
    }

    /// Adds `(prompt, key)` rows.
    pub fn add(&mut self, prompts: &[i64], keys: &[&str]) -> Result<()> {
        if prompts.len() != keys.len() {
            return Err(CoreError::Shape(format!(
                "{} prompt ids for {} keys",
                prompts.len(),
                keys.len()
            )));
        }
        let entries = prompts
            .iter()
            .map(|&p| prompt_entry(p))
            .collect::<Result<Vec<u32>>>()?;
        for (&p, &k) in entries.iter().zip(keys) {
            let i = self.id_of(k);
            if self.prompts[i as usize].insert(p) {
                self.rows += 1;
                self.dirty.insert(i);
            }
        }
        Ok(())
    }

    /// Adds the prompts of one key given as SQLite's `group_concat` of ids ("3,17,40"): a
    /// rebuild reads one row per key instead of one per activation.
    pub fn add_concatenated(&mut self, key: &str, ids: &str) -> Result<()> {
        let i = self.id_of(key) as usize;
        let mut added = 0;
        for part in ids.split(',').filter(|p| !p.is_empty()) {
            let id: i64 = part.trim().parse().map_err(|_| {
                CoreError::Invalid(format!(
                    "prompt id {part:?} of key {key:?} is not an integer"
                ))
            })?;
            if self.prompts[i].insert(prompt_entry(id)?) {
                added += 1;
            }
        }
        if added > 0 {
            self.rows += added;
            self.dirty.insert(i as u32);
        }
        Ok(())
    }

    /// Replaces a key's bitmap with a persisted one (not marked dirty: it is what is stored).
    pub fn load(&mut self, key: &str, bitmap: &[u8]) -> Result<()> {
        let b = RoaringBitmap::deserialize_from(bitmap).map_err(|e| {
            CoreError::Graph(format!("the stored index of {key:?} is damaged ({e})"))
        })?;
        let i = self.id_of(key) as usize;
        self.rows = self.rows - self.prompts[i].len() + b.len();
        self.prompts[i] = b;
        Ok(())
    }

    /// The serialized bitmaps of the keys changed since the last call, and forgets them.
    pub fn take_dirty(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut ids: Vec<u32> = self.dirty.drain().collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|i| {
                let b = &self.prompts[i as usize];
                let mut bytes = Vec::with_capacity(b.serialized_size());
                b.serialize_into(&mut bytes).expect("writing to a Vec");
                (self.keys[i as usize].clone(), bytes)
            })
            .collect()
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// Distinct `(prompt, key)` rows held.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn key_count(&self) -> usize {
        self.keys
            .iter()
            .zip(&self.prompts)
            .filter(|(_, b)| !b.is_empty())
            .count()
    }

    /// The prompts of one key (empty for an unknown key).
    pub fn prompts_of(&self, key: &str) -> RoaringBitmap {
        self.ids
            .get(key)
            .map(|&i| self.prompts[i as usize].clone())
            .unwrap_or_default()
    }

    /// Whether the index has the key on at least one prompt.
    pub fn contains(&self, key: &str) -> bool {
        self.ids
            .get(key)
            .is_some_and(|&i| !self.prompts[i as usize].is_empty())
    }

    /// Prompts matching `include` combined by `mode`, minus those of any `exclude` key, in
    /// ascending id order. No included key: no prompts (the seed's rule for an empty list).
    pub fn query(&self, include: &[&str], mode: Mode, exclude: &[&str]) -> RoaringBitmap {
        if include.is_empty() {
            return RoaringBitmap::new();
        }
        let empty = RoaringBitmap::new();
        let bitmap = |k: &&str| -> &RoaringBitmap {
            self.ids
                .get(*k)
                .map_or(&empty, |&i| &self.prompts[i as usize])
        };
        let mut found = match mode {
            Mode::All => {
                // Smallest first: each intersection can only shrink the result.
                let mut maps: Vec<&RoaringBitmap> = include.iter().map(bitmap).collect();
                maps.sort_by_key(|b| b.len());
                if maps[0].is_empty() {
                    return RoaringBitmap::new();
                }
                maps.into_iter().intersection()
            }
            Mode::Any => include.iter().map(bitmap).union(),
        };
        for k in exclude {
            found -= bitmap(k);
        }
        found
    }
}
