//! The discovery job's writes: its run record, the `clusters` and `prototypes` tables, and the
//! cluster of every fingerprint of its window, in one transaction of a connection of its own
//! (beside the writer thread; SQLite's lock and the busy timeout order them).

use std::path::Path;

use rusqlite::params_from_iter;

use super::SqlValue;
use super::connection;
use super::options::StoreOptions;
use super::triggers;
use crate::error::{CoreError, Result};

/// Why not one `UPDATE` per row through the table's trigger: the trigger keeps a dozen counts
/// right per row (cluster_growth, the request's dominant cluster and transitions); 1M rows took
/// over five minutes. Here, inside the job's transaction, the trigger is dropped, the rows are
/// updated in one statement, the counts that depend on `cluster_id` are adjusted by the
/// differences for the days and requests touched, and the trigger is made again. Other
/// connections see all of it or none of it.
const BULK_SQL: &str = "
DROP TRIGGER IF EXISTS af_fingerprints_update;
CREATE TEMP TABLE af_old AS
    SELECT f.id AS id, f.id >> 24 AS k, f.created_us / 86400000000 AS day, f.cluster_id AS old,
           a.cluster_id AS new
    FROM temp.af_assign a JOIN af_fingerprints f ON f.id = a.id
    WHERE f.cluster_id IS NOT a.cluster_id OR f.cluster_probability IS NOT a.probability;
UPDATE af_fingerprints SET cluster_id = a.cluster_id, cluster_probability = a.probability
    FROM temp.af_assign a WHERE af_fingerprints.id = a.id;
INSERT INTO af_cluster_daily (day, cluster_id, count)
    SELECT day, old, -count(*) FROM temp.af_old WHERE old >= 0 AND old IS NOT new GROUP BY 1, 2
    ON CONFLICT (day, cluster_id) DO UPDATE SET count = count + excluded.count;
INSERT INTO af_cluster_daily (day, cluster_id, count)
    SELECT day, new, count(*) FROM temp.af_old WHERE new >= 0 AND old IS NOT new GROUP BY 1, 2
    ON CONFLICT (day, cluster_id) DO UPDATE SET count = count + excluded.count;
DELETE FROM af_cluster_daily WHERE count <= 0;
INSERT INTO af_request_clusters (request_key, cluster_id, count)
    SELECT k, old, -count(*) FROM temp.af_old WHERE old >= 0 AND old IS NOT new GROUP BY 1, 2
    ON CONFLICT (request_key, cluster_id) DO UPDATE SET count = count + excluded.count;
INSERT INTO af_request_clusters (request_key, cluster_id, count)
    SELECT k, new, count(*) FROM temp.af_old WHERE new >= 0 AND old IS NOT new GROUP BY 1, 2
    ON CONFLICT (request_key, cluster_id) DO UPDATE SET count = count + excluded.count;
DELETE FROM af_request_clusters WHERE count <= 0;
CREATE TEMP TABLE af_keys AS SELECT DISTINCT k FROM temp.af_old WHERE old IS NOT new;
CREATE TEMP TABLE af_transitions AS
    SELECT k, total(coalesce(c >= 0 AND p >= 0 AND c != p, 0)) AS n FROM (
        SELECT kk.k AS k, f.cluster_id AS c,
               lag(f.cluster_id) OVER (PARTITION BY kk.k ORDER BY f.id) AS p
        FROM temp.af_keys kk JOIN af_fingerprints f
            ON f.id BETWEEN kk.k * 16777216 AND kk.k * 16777216 + 16777215)
    GROUP BY k;
UPDATE af_request_stats SET cluster_transitions = t.n
    FROM temp.af_transitions t WHERE af_request_stats.request_key = t.k;
UPDATE request_summary SET
    cluster_transitions = (SELECT cluster_transitions FROM af_request_stats s
        WHERE s.request_key = q.k),
    dominant_cluster_id = coalesce((SELECT cluster_id FROM af_request_clusters c
        WHERE c.request_key = q.k AND count > 0 ORDER BY count DESC, cluster_id LIMIT 1), -1)
    FROM (SELECT kk.k AS k, r.request_id AS request_id
          FROM temp.af_keys kk JOIN af_requests r ON r.request_key = kk.k) q
    WHERE request_summary.request_id = q.request_id;
INSERT OR IGNORE INTO af_meta (key, value)
    SELECT 'has:cluster_probability', 1 WHERE EXISTS (SELECT 1 FROM temp.af_assign);
DROP TABLE temp.af_old;
DROP TABLE temp.af_keys;
DROP TABLE temp.af_transitions;
DROP TABLE temp.af_assign;
";

/// The bulk write-back (see [`BULK_SQL`]); returns the rows of `clusters` that are stored.
fn write_clusters(tx: &rusqlite::Transaction<'_>, clusters: &ClusterColumns<'_>) -> Result<u64> {
    tx.execute_batch(
        "CREATE TEMP TABLE af_assign (id INTEGER PRIMARY KEY, cluster_id INTEGER, probability REAL)",
    )?;
    {
        let mut insert = tx.prepare("INSERT OR REPLACE INTO temp.af_assign VALUES (?1, ?2, ?3)")?;
        for i in 0..clusters.ids.len() {
            insert.execute(rusqlite::params![
                clusters.ids[i],
                clusters.cluster_id[i],
                f64::from(clusters.probability[i])
            ])?;
        }
    }
    let stored: i64 = tx.query_row(
        "SELECT count(*) FROM temp.af_assign a JOIN af_fingerprints f ON f.id = a.id",
        [],
        |r| r.get(0),
    )?;
    tx.execute_batch(BULK_SQL)?;
    tx.execute_batch(&triggers::update_trigger())?;
    Ok(stored as u64)
}

/// One parameterised statement, run once per row of parameters.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    pub rows: Vec<Vec<SqlValue>>,
}

/// Clusters to write back: fingerprint ids (the store's row ids) and their cluster and
/// membership probability.
#[derive(Debug, Clone, Default)]
pub struct ClusterColumns<'a> {
    pub ids: &'a [i64],
    pub cluster_id: &'a [i32],
    pub probability: &'a [f32],
}

/// Runs `statements`, then writes `clusters` back to the fingerprint rows, all in one
/// transaction: a failure leaves the database as it was. Returns the fingerprint rows updated
/// (ids no longer stored are skipped: rows deleted since the job read them).
pub fn write(
    path: &Path,
    opts: &StoreOptions,
    statements: &[Statement],
    clusters: &ClusterColumns<'_>,
) -> Result<u64> {
    let n = clusters.ids.len();
    if clusters.cluster_id.len() != n || clusters.probability.len() != n {
        return Err(CoreError::Shape(format!(
            "cluster columns disagree: {n} ids, {} cluster ids, {} probabilities",
            clusters.cluster_id.len(),
            clusters.probability.len()
        )));
    }
    let mut conn = connection::open(path, opts)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for s in statements {
        let mut stmt = tx
            .prepare_cached(&s.sql)
            .map_err(|e| CoreError::Invalid(format!("SQL: {e}")))?;
        for row in &s.rows {
            stmt.execute(params_from_iter(row.iter()))?;
        }
    }
    let updated = if n > 0 {
        write_clusters(&tx, clusters)?
    } else {
        0
    };
    tx.commit()?;
    Ok(updated)
}
