-- attnfast store, physical schema 2. It speaks the seed's schema version 1 through views
-- (`fingerprints`, `zone_distribution_hourly`, `cluster_growth`, `recent_fingerprints`) and
-- keeps the seed's other tables as they are. Why the split: see docs/store.md.
-- Every statement is idempotent; `open` runs this file inside one transaction. The triggers
-- are generated (`triggers.rs`): they share SQL with the writer and with each other.

-- Text request ids, each stored once. Keys are never reused, so writers may cache them.
CREATE TABLE IF NOT EXISTS af_requests (
    request_key INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE
);

-- One row per captured step, keyed by id = request_key * 2^24 + step. Why: the key enforces
-- UNIQUE(request_id, step) and keeps a request's rows together (a request's rows are one range
-- scan) with no secondary index; each index cost about a third of insert speed. No CHECK
-- constraints either (they halved insert speed): the writer and the view's trigger check.
CREATE TABLE IF NOT EXISTS af_fingerprints (
    id INTEGER PRIMARY KEY,
    session_id TEXT,
    token_id INTEGER,
    token_text TEXT,
    think_phase INTEGER,                                           -- think, output, unknown
    segment_idx INTEGER DEFAULT 0,
    fingerprint BLOB NOT NULL,
    zone INTEGER,                                                  -- attnfast.ZONES order
    manifold_confidence REAL,
    cluster_id INTEGER DEFAULT -1,
    cluster_probability REAL,
    top_expert_ids BLOB,
    router_entropy REAL,
    expert_load_balance REAL,
    top_k_positions BLOB,
    top_k_scores BLOB,
    sink_token_mass REAL,
    capture_layer_ids BLOB,
    layout INTEGER NOT NULL DEFAULT 1,                             -- seed column schema_version
    model_id TEXT,
    created_us INTEGER NOT NULL,                                   -- unix time, microseconds UTC
    -- 1: the vector breaks its layout's rules (docs/store.md); such rows were written by the
    -- seed's tools, which must keep working, and carry zone unknown. Added in schema 2.
    invalid INTEGER NOT NULL DEFAULT 0
);

-- A block-range index on time: the smallest and largest id written in each hour. A time
-- filter becomes an id range plus a check of created_us, at no per-row index cost.
CREATE TABLE IF NOT EXISTS af_hour_ids (
    hour INTEGER PRIMARY KEY,                                      -- created_us / 3600e6
    min_id INTEGER NOT NULL,
    max_id INTEGER NOT NULL
);

-- Counts behind zone_distribution_hourly and cluster_growth, kept by the writer per batch
-- (and by the triggers below for rows changed with SQL), so those views cost nothing at any size.
CREATE TABLE IF NOT EXISTS af_zone_hourly (
    hour INTEGER NOT NULL,                                         -- created_us / 3600e6
    zone INTEGER NOT NULL,
    count INTEGER NOT NULL,
    confidence_sum REAL NOT NULL,
    confidence_count INTEGER NOT NULL,
    PRIMARY KEY (hour, zone)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS af_cluster_daily (
    day INTEGER NOT NULL,                                          -- created_us / 86400e6
    cluster_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (day, cluster_id)
) WITHOUT ROWID;

-- Store bookkeeping: the physical schema version, rows stored (count(*) scans the table),
-- rows per layout ('rows_layout:<code>'), rows flagged invalid, duplicate rows refused, and one
-- 'has:<column>' row per sparse column that holds a value somewhere (exports skip reading the
-- others: reading a NULL still costs).
CREATE TABLE IF NOT EXISTS af_meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO af_meta (key, value)
VALUES ('duplicates_rejected', 0), ('rows', 0), ('invalid_rows', 0);

-- What request_summary is derived from, per request: counts and sums that every write path
-- (the writer, the view's triggers, SQL updates and deletes) adds to and subtracts from, so
-- that no path rescans a request. The summary's columns are computed from these
-- (summary.rs: REFRESH). zone3 counts rows whose zone is unknown or NULL.
CREATE TABLE IF NOT EXISTS af_request_stats (
    request_key INTEGER PRIMARY KEY,
    row_count INTEGER NOT NULL DEFAULT 0,
    think INTEGER NOT NULL DEFAULT 0,
    output INTEGER NOT NULL DEFAULT 0,
    zone0 INTEGER NOT NULL DEFAULT 0,
    zone1 INTEGER NOT NULL DEFAULT 0,
    zone2 INTEGER NOT NULL DEFAULT 0,
    zone3 INTEGER NOT NULL DEFAULT 0,
    measured INTEGER NOT NULL DEFAULT 0,                           -- valid rows, behind the means
    local_sum REAL NOT NULL DEFAULT 0,
    long_sum REAL NOT NULL DEFAULT 0,
    entropy_sum REAL NOT NULL DEFAULT 0,
    router_count INTEGER NOT NULL DEFAULT 0,
    router_sum REAL NOT NULL DEFAULT 0,
    cluster_transitions INTEGER NOT NULL DEFAULT 0,
    expert_switches INTEGER NOT NULL DEFAULT 0,
    -- The token texts of the first 500 steps (cut at 500 characters), how many steps that
    -- is, and the id of the last one: a row added after it extends the preview, one before it
    -- makes it recomputed.
    preview TEXT NOT NULL DEFAULT '',
    preview_rows INTEGER NOT NULL DEFAULT 0,
    preview_end INTEGER NOT NULL DEFAULT -1
);

-- How many of a request's rows carry each cluster (>= 0) and each expert id: the dominant
-- cluster and the count of distinct experts, kept right by additions and subtractions.
CREATE TABLE IF NOT EXISTS af_request_clusters (
    request_key INTEGER NOT NULL,
    cluster_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (request_key, cluster_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS af_request_experts (
    request_key INTEGER NOT NULL,
    expert_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (request_key, expert_id)
) WITHOUT ROWID;

-- 0..4095: triggers cannot use recursive CTEs, so they read the int32 entries of a
-- top_expert_ids blob (at most 4096) by joining these.
CREATE TABLE IF NOT EXISTS af_numbers (i INTEGER PRIMARY KEY);
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 4095)
INSERT OR IGNORE INTO af_numbers (i) SELECT i FROM n;

-- A vector written through the view, decoded once for the triggers that need it (the row's
-- flag and zone, the request's means), and deleted at once: empty between statements.
CREATE TABLE IF NOT EXISTS af_decoded (
    id INTEGER PRIMARY KEY,
    bad INTEGER NOT NULL,
    local REAL,
    long REAL,
    entropy REAL,
    rule_zone INTEGER,
    rule_confidence REAL
);

-- Rows that an earlier attnfast let in through the seed's view although no reader can read
-- them (a fingerprint blob of the wrong length, a list blob that is not whole int32s, text
-- where a number belongs). Opening such a database moves them here, with the reason, so the
-- rest reads again. Columns untyped: the values are kept exactly as they were.
CREATE TABLE IF NOT EXISTS af_quarantine (
    reason TEXT NOT NULL,
    quarantined_us INTEGER NOT NULL,
    request_id,
    id, session_id, token_id, token_text, think_phase, segment_idx, fingerprint, zone,
    manifold_confidence, cluster_id, cluster_probability, top_expert_ids, router_entropy,
    expert_load_balance, top_k_positions, top_k_scores, sink_token_mass, capture_layer_ids,
    layout, model_id, created_us
);

-- The seed's tables, column for column.
CREATE TABLE IF NOT EXISTS request_summary (
    request_id TEXT PRIMARY KEY,
    session_id TEXT,
    total_steps INTEGER NOT NULL,
    think_steps INTEGER DEFAULT 0,
    output_steps INTEGER DEFAULT 0,
    syntax_floor_pct REAL DEFAULT 0,
    semantic_bridge_pct REAL DEFAULT 0,
    structure_ripple_pct REAL DEFAULT 0,
    unknown_pct REAL DEFAULT 0,
    dominant_zone TEXT,
    mean_entropy REAL,
    mean_local_mass REAL,
    mean_long_mass REAL,
    expert_entropy_mean REAL,
    expert_switch_count INTEGER DEFAULT 0,
    unique_experts_used INTEGER DEFAULT 0,
    dominant_cluster_id INTEGER DEFAULT -1,
    cluster_transitions INTEGER DEFAULT 0,
    prompt_preview TEXT,
    response_preview TEXT,
    model_id TEXT,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (session_id) REFERENCES sessions (session_id)
);
CREATE INDEX IF NOT EXISTS idx_request_summary_session ON request_summary (session_id);
CREATE INDEX IF NOT EXISTS idx_request_summary_zone ON request_summary (dominant_zone);
CREATE INDEX IF NOT EXISTS idx_request_summary_cluster ON request_summary (dominant_cluster_id);
CREATE INDEX IF NOT EXISTS idx_request_summary_created ON request_summary (created_at);

CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    name TEXT,
    model_id TEXT,
    request_count INTEGER DEFAULT 0,
    total_tokens INTEGER DEFAULT 0,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS discovery_runs (
    run_id TEXT PRIMARY KEY,
    time_window_start TIMESTAMP,
    time_window_end TIMESTAMP,
    fingerprint_count INTEGER,
    request_count INTEGER,
    cluster_count INTEGER,
    noise_count INTEGER,
    embedding_method TEXT,
    clustering_method TEXT,
    min_cluster_size INTEGER,
    output_dir TEXT,
    status TEXT CHECK (status IN ('running', 'completed', 'failed')),
    error_message TEXT,
    started_at TIMESTAMP,
    completed_at TIMESTAMP,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_discovery_runs_status ON discovery_runs (status);
CREATE INDEX IF NOT EXISTS idx_discovery_runs_completed ON discovery_runs (completed_at);

CREATE TABLE IF NOT EXISTS clusters (
    cluster_id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    label TEXT,
    description TEXT,
    dominant_zone TEXT,
    zone_confidence REAL,
    size INTEGER,
    persistence REAL,
    centroid_x REAL,
    centroid_y REAL,
    centroid_fingerprint BLOB,
    medoid_request_id TEXT,
    medoid_step INTEGER,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (run_id) REFERENCES discovery_runs (run_id)
);
CREATE INDEX IF NOT EXISTS idx_clusters_run ON clusters (run_id);
CREATE INDEX IF NOT EXISTS idx_clusters_zone ON clusters (dominant_zone);
INSERT OR IGNORE INTO clusters (cluster_id, run_id, label, dominant_zone, size)
VALUES (-1, 'initial', 'Unassigned', 'unknown', 0);

CREATE TABLE IF NOT EXISTS prototypes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    rank INTEGER NOT NULL,
    fingerprint_id INTEGER,
    request_id TEXT,
    step INTEGER,
    token_text TEXT,
    context_before TEXT,
    context_after TEXT,
    prompt_preview TEXT,
    x REAL,
    y REAL,
    FOREIGN KEY (cluster_id) REFERENCES clusters (cluster_id),
    FOREIGN KEY (run_id) REFERENCES discovery_runs (run_id)
);
CREATE INDEX IF NOT EXISTS idx_prototypes_cluster ON prototypes (cluster_id, rank);

CREATE TABLE IF NOT EXISTS control_signals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    signal_type TEXT CHECK (signal_type IN (
        'layer_adjustment', 'stride_adjustment', 'bias_injection', 'early_stop')),
    payload TEXT,
    trigger_reason TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_control_signals_request ON control_signals (request_id);

CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    description TEXT
);
INSERT OR IGNORE INTO schema_version (version, description)
VALUES (1, 'seed schema 1, stored by attnfast (physical store schema 1)');

CREATE TRIGGER IF NOT EXISTS update_session_on_request
AFTER INSERT ON request_summary WHEN NEW.session_id IS NOT NULL
BEGIN
    UPDATE sessions SET request_count = request_count + 1, updated_at = CURRENT_TIMESTAMP
    WHERE session_id = NEW.session_id;
END;

-- The seed's fingerprints table, as a view. Times read as 'YYYY-MM-DD HH:MM:SS' UTC, the
-- format of CURRENT_TIMESTAMP, so the seed's comparisons against it hold.
CREATE VIEW IF NOT EXISTS fingerprints AS
SELECT
    f.id AS id,
    r.request_id AS request_id,
    f.session_id AS session_id,
    f.id & 16777215 AS step,
    f.token_id AS token_id,
    f.token_text AS token_text,
    CASE f.think_phase WHEN 0 THEN 'think' WHEN 1 THEN 'output' WHEN 2 THEN 'unknown' END
        AS think_phase,
    f.segment_idx AS segment_idx,
    f.fingerprint AS fingerprint,
    CASE f.zone WHEN 0 THEN 'syntax_floor' WHEN 1 THEN 'semantic_bridge'
        WHEN 2 THEN 'structure_ripple' WHEN 3 THEN 'unknown' END AS manifold_zone,
    f.manifold_confidence AS manifold_confidence,
    f.cluster_id AS cluster_id,
    f.cluster_probability AS cluster_probability,
    f.top_expert_ids AS top_expert_ids,
    f.router_entropy AS router_entropy,
    f.expert_load_balance AS expert_load_balance,
    f.top_k_positions AS top_k_positions,
    f.top_k_scores AS top_k_scores,
    f.sink_token_mass AS sink_token_mass,
    f.capture_layer_ids AS capture_layer_ids,
    f.layout AS schema_version,
    f.model_id AS model_id,
    strftime('%Y-%m-%d %H:%M:%S', f.created_us / 1000000, 'unixepoch') AS created_at
FROM af_requests r JOIN af_fingerprints f
    ON f.id BETWEEN r.request_key * 16777216 AND r.request_key * 16777216 + 16777215;

CREATE VIEW IF NOT EXISTS zone_distribution_hourly AS
SELECT
    strftime('%Y-%m-%d %H:00:00', hour * 3600, 'unixepoch') AS hour,
    CASE zone WHEN 0 THEN 'syntax_floor' WHEN 1 THEN 'semantic_bridge'
        WHEN 2 THEN 'structure_ripple' WHEN 3 THEN 'unknown' END AS manifold_zone,
    count,
    confidence_sum / NULLIF(confidence_count, 0) AS avg_confidence
FROM af_zone_hourly
WHERE count > 0
ORDER BY hour DESC;

CREATE VIEW IF NOT EXISTS cluster_growth AS
SELECT
    strftime('%Y-%m-%d', day * 86400, 'unixepoch') AS day,
    cluster_id,
    count
FROM af_cluster_daily
WHERE cluster_id >= 0 AND count > 0
ORDER BY day DESC, count DESC;

CREATE VIEW IF NOT EXISTS recent_fingerprints AS
SELECT f.id, f.request_id, f.step, f.token_text, f.think_phase, f.manifold_zone,
       f.manifold_confidence, f.cluster_id, c.label AS cluster_label, f.router_entropy,
       f.sink_token_mass, f.created_at
FROM fingerprints f LEFT JOIN clusters c ON f.cluster_id = c.cluster_id
ORDER BY f.created_at DESC
LIMIT 10000;
