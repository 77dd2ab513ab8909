//! Classification at ingest: the sidecar's rows get their cluster as they are stored.

use super::classifier::Classifier;
use crate::fingerprint::FINGERPRINT_DIM;
use crate::store::batch::Batch;

/// Gives each row of `batch` that carries no cluster of its own the classifier's cluster and
/// probability. A carried `-1` counts as none: it is the seed's default for "not clustered",
/// which the SGLang side sends on every row. Rows of another layout, rows the caller flags invalid and rows that are not
/// vectors of the layout are left as they are (the store's checks refuse or flag those).
pub fn classify_batch(classifier: &Classifier, batch: &mut Batch) {
    if batch.layout != classifier.layout() {
        return;
    }
    let n = batch.steps.len();
    let given_ids = batch.cluster_id.take();
    let given_p = batch.cluster_probability.take();
    let flagged = batch.invalid.as_deref();
    let mut ids = Vec::with_capacity(n);
    let mut probabilities = Vec::with_capacity(n);
    for r in 0..n {
        let given = given_ids.as_ref().and_then(|c| c[r]).filter(|&c| c >= 0);
        let given_probability = given_p.as_ref().map_or(f64::NAN, |p| p[r]);
        if given.is_some() || flagged.is_some_and(|f| f[r]) {
            ids.push(given);
            probabilities.push(given_probability);
            continue;
        }
        let fp = &batch.fingerprints[r * FINGERPRINT_DIM..(r + 1) * FINGERPRINT_DIM];
        match classifier.assign_one(fp) {
            Ok(a) => {
                ids.push(Some(i64::from(a.cluster_id)));
                probabilities.push(f64::from(a.probability));
            }
            Err(_) => {
                ids.push(None);
                probabilities.push(given_probability);
            }
        }
    }
    batch.cluster_id = Some(ids);
    batch.cluster_probability = Some(probabilities);
}
