-- attnfast store, physical schema 1. It speaks the seed's schema version 1 through views
-- (`fingerprints`, `zone_distribution_hourly`, `cluster_growth`, `recent_fingerprints`) and
-- keeps the seed's other tables as they are. Why the split: see docs/store.md.
-- Every statement is idempotent; `open` runs this file inside one transaction.

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
    created_us INTEGER NOT NULL                                    -- unix time, microseconds UTC
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
-- duplicate rows refused, and one 'has:<column>' row per sparse column that holds a value
-- somewhere (exports skip reading the others: reading a NULL still costs).
CREATE TABLE IF NOT EXISTS af_meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO af_meta (key, value)
VALUES ('store_schema', 1), ('duplicates_rejected', 0), ('rows', 0);

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

-- Rows changed with SQL (a discovery job relabelling clusters, a cleanup deleting old rows)
-- keep the hourly and daily counts right. The writer's own inserts maintain them per batch.
CREATE TRIGGER IF NOT EXISTS af_fingerprints_counts_delete
AFTER DELETE ON af_fingerprints
BEGIN
    UPDATE af_meta SET value = value - 1 WHERE key = 'rows';
    UPDATE af_zone_hourly
    SET count = count - 1,
        confidence_sum = confidence_sum - coalesce(OLD.manifold_confidence, 0),
        confidence_count = confidence_count - (OLD.manifold_confidence IS NOT NULL)
    WHERE hour = OLD.created_us / 3600000000 AND zone = OLD.zone;
    UPDATE af_cluster_daily SET count = count - 1
    WHERE day = OLD.created_us / 86400000000 AND cluster_id = OLD.cluster_id;
END;

CREATE TRIGGER IF NOT EXISTS af_fingerprints_counts_update
AFTER UPDATE OF zone, manifold_confidence, cluster_id, created_us ON af_fingerprints
BEGIN
    UPDATE af_zone_hourly
    SET count = count - 1,
        confidence_sum = confidence_sum - coalesce(OLD.manifold_confidence, 0),
        confidence_count = confidence_count - (OLD.manifold_confidence IS NOT NULL)
    WHERE hour = OLD.created_us / 3600000000 AND zone = OLD.zone;
    INSERT INTO af_zone_hourly (hour, zone, count, confidence_sum, confidence_count)
    SELECT NEW.created_us / 3600000000, NEW.zone, 1, coalesce(NEW.manifold_confidence, 0),
           NEW.manifold_confidence IS NOT NULL
    WHERE NEW.zone IS NOT NULL
    ON CONFLICT (hour, zone) DO UPDATE SET
        count = count + 1,
        confidence_sum = confidence_sum + excluded.confidence_sum,
        confidence_count = confidence_count + excluded.confidence_count;
    UPDATE af_cluster_daily SET count = count - 1
    WHERE day = OLD.created_us / 86400000000 AND cluster_id = OLD.cluster_id;
    INSERT INTO af_cluster_daily (day, cluster_id, count)
    SELECT NEW.created_us / 86400000000, NEW.cluster_id, 1 WHERE NEW.cluster_id IS NOT NULL
    ON CONFLICT (day, cluster_id) DO UPDATE SET count = count + 1;
    INSERT INTO af_hour_ids (hour, min_id, max_id)
    SELECT NEW.created_us / 3600000000, NEW.id, NEW.id WHERE true
    ON CONFLICT (hour) DO UPDATE SET
        min_id = min(min_id, excluded.min_id), max_id = max(max_id, excluded.max_id);
END;

-- Sparse columns set with SQL mark themselves too (the list is schema::SPARSE_COLUMNS; the
-- view's trigger below repeats it: SQL triggers cannot share statements).
CREATE TRIGGER IF NOT EXISTS af_fingerprints_sparse_update
AFTER UPDATE OF session_id, token_id, token_text, think_phase, cluster_probability, router_entropy, expert_load_balance, sink_token_mass, top_k_positions, top_k_scores, capture_layer_ids, top_expert_ids, model_id ON af_fingerprints
BEGIN
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:session_id', 1 WHERE NEW.session_id IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:token_id', 1 WHERE NEW.token_id IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:token_text', 1 WHERE NEW.token_text IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:think_phase', 1 WHERE NEW.think_phase IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:cluster_probability', 1 WHERE NEW.cluster_probability IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:router_entropy', 1 WHERE NEW.router_entropy IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:expert_load_balance', 1 WHERE NEW.expert_load_balance IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:sink_token_mass', 1 WHERE NEW.sink_token_mass IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:top_k_positions', 1 WHERE NEW.top_k_positions IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:top_k_scores', 1 WHERE NEW.top_k_scores IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:capture_layer_ids', 1 WHERE NEW.capture_layer_ids IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:top_expert_ids', 1 WHERE NEW.top_expert_ids IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:model_id', 1 WHERE NEW.model_id IS NOT NULL;
END;

-- Writes through the seed's view (the seed's own sidecar, `INSERT INTO fingerprints`):
-- the row lands in the tables above with the same bookkeeping as the writer's. A repeated
-- (request_id, step) is refused and counted even under INSERT OR REPLACE: never overwritten.
CREATE TRIGGER IF NOT EXISTS af_fingerprints_insert_through_view
INSTEAD OF INSERT ON fingerprints
BEGIN
    SELECT RAISE(ABORT, 'step must be an integer from 0 to 16777215')
    WHERE typeof(NEW.step) != 'integer' OR NEW.step < 0 OR NEW.step > 16777215;
    SELECT RAISE(ABORT, 'think_phase must be think, output, unknown or NULL')
    WHERE NEW.think_phase IS NOT NULL AND NEW.think_phase NOT IN ('think', 'output', 'unknown');
    SELECT RAISE(ABORT, 'manifold_zone must be syntax_floor, semantic_bridge, structure_ripple, unknown or NULL')
    WHERE NEW.manifold_zone IS NOT NULL AND NEW.manifold_zone NOT IN
        ('syntax_floor', 'semantic_bridge', 'structure_ripple', 'unknown');
    -- No statement here may meet a conflict: an outer INSERT OR REPLACE would turn it into a
    -- replace. So the request row is added only when missing, and duplicates RAISE(IGNORE).
    INSERT INTO af_requests (request_id) SELECT NEW.request_id
    WHERE NOT EXISTS (SELECT 1 FROM af_requests WHERE request_id = NEW.request_id);
    UPDATE af_meta SET value = value + 1
    WHERE key = 'duplicates_rejected' AND EXISTS (
        SELECT 1 FROM af_fingerprints WHERE id = (SELECT request_key * 16777216 + NEW.step
            FROM af_requests WHERE request_id = NEW.request_id));
    SELECT RAISE(IGNORE) WHERE EXISTS (
        SELECT 1 FROM af_fingerprints WHERE id = (SELECT request_key * 16777216 + NEW.step
            FROM af_requests WHERE request_id = NEW.request_id));
    INSERT INTO af_fingerprints (
        id, session_id, token_id, token_text, think_phase, segment_idx,
        fingerprint, zone, manifold_confidence, cluster_id, cluster_probability,
        top_expert_ids, router_entropy, expert_load_balance, top_k_positions, top_k_scores,
        sink_token_mass, capture_layer_ids, layout, model_id, created_us)
    VALUES (
        (SELECT request_key * 16777216 + NEW.step FROM af_requests
            WHERE request_id = NEW.request_id),
        NEW.session_id, NEW.token_id, NEW.token_text,
        CASE NEW.think_phase WHEN 'think' THEN 0 WHEN 'output' THEN 1 WHEN 'unknown' THEN 2 END,
        coalesce(NEW.segment_idx, 0), NEW.fingerprint,
        CASE NEW.manifold_zone WHEN 'syntax_floor' THEN 0 WHEN 'semantic_bridge' THEN 1
            WHEN 'structure_ripple' THEN 2 WHEN 'unknown' THEN 3 END,
        NEW.manifold_confidence, coalesce(NEW.cluster_id, -1), NEW.cluster_probability,
        NEW.top_expert_ids, NEW.router_entropy, NEW.expert_load_balance, NEW.top_k_positions,
        NEW.top_k_scores, NEW.sink_token_mass, NEW.capture_layer_ids,
        coalesce(NEW.schema_version, 1), NEW.model_id,
        -- julianday, not unixepoch(): the seed's tools run on SQLite builds older than 3.38.
        -- Rounded to the millisecond, which a julianday double holds exactly.
        CAST(round((julianday(coalesce(NEW.created_at, 'now')) - 2440587.5) * 86400000)
             AS INTEGER) * 1000);
    UPDATE af_meta SET value = value + 1 WHERE key = 'rows';
    INSERT INTO af_hour_ids (hour, min_id, max_id)
    SELECT created_us / 3600000000, id, id FROM af_fingerprints WHERE id = (SELECT request_key * 16777216 + NEW.step
        FROM af_requests WHERE request_id = NEW.request_id)
    ON CONFLICT (hour) DO UPDATE SET
        min_id = min(min_id, excluded.min_id), max_id = max(max_id, excluded.max_id);
    INSERT INTO af_zone_hourly (hour, zone, count, confidence_sum, confidence_count)
    SELECT created_us / 3600000000, zone, 1, coalesce(manifold_confidence, 0),
           manifold_confidence IS NOT NULL
    FROM af_fingerprints WHERE id = (SELECT request_key * 16777216 + NEW.step
        FROM af_requests WHERE request_id = NEW.request_id) AND zone IS NOT NULL
    ON CONFLICT (hour, zone) DO UPDATE SET
        count = count + 1,
        confidence_sum = confidence_sum + excluded.confidence_sum,
        confidence_count = confidence_count + excluded.confidence_count;
    INSERT INTO af_cluster_daily (day, cluster_id, count)
    SELECT created_us / 86400000000, cluster_id, 1
    FROM af_fingerprints WHERE id = (SELECT request_key * 16777216 + NEW.step
        FROM af_requests WHERE request_id = NEW.request_id) AND cluster_id IS NOT NULL
    ON CONFLICT (day, cluster_id) DO UPDATE SET count = count + 1;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:session_id', 1 WHERE NEW.session_id IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:token_id', 1 WHERE NEW.token_id IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:token_text', 1 WHERE NEW.token_text IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:think_phase', 1 WHERE NEW.think_phase IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:cluster_probability', 1 WHERE NEW.cluster_probability IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:router_entropy', 1 WHERE NEW.router_entropy IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:expert_load_balance', 1 WHERE NEW.expert_load_balance IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:sink_token_mass', 1 WHERE NEW.sink_token_mass IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:top_k_positions', 1 WHERE NEW.top_k_positions IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:top_k_scores', 1 WHERE NEW.top_k_scores IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:capture_layer_ids', 1 WHERE NEW.capture_layer_ids IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:top_expert_ids', 1 WHERE NEW.top_expert_ids IS NOT NULL;
    INSERT OR IGNORE INTO af_meta (key, value) SELECT 'has:model_id', 1 WHERE NEW.model_id IS NOT NULL;
    INSERT INTO request_summary (request_id, total_steps, model_id, started_at)
    SELECT NEW.request_id, 1, model_id,
           strftime('%Y-%m-%d %H:%M:%S', created_us / 1000000, 'unixepoch')
    FROM af_fingerprints WHERE id = (SELECT request_key * 16777216 + NEW.step
        FROM af_requests WHERE request_id = NEW.request_id)
    ON CONFLICT (request_id) DO UPDATE SET
        total_steps = total_steps + 1,
        think_steps = think_steps + (NEW.think_phase IS 'think'),
        output_steps = output_steps + (NEW.think_phase IS 'output'),
        finished_at = excluded.started_at;
END;
