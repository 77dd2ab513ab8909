"""The seed's SQLite schema version 1 and its sidecar's write path, as an independent reference
for the store tests. Written from the description in shared/REFERENCE.md (tables, columns,
CHECKs, indexes, the per-row trigger, the views), not from attnfast's schema."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path
from typing import Any

SEED_SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS fingerprints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    session_id TEXT,
    step INTEGER NOT NULL,
    token_id INTEGER,
    token_text TEXT,
    think_phase TEXT CHECK(think_phase IN ('think', 'output', 'unknown')),
    segment_idx INTEGER DEFAULT 0,
    fingerprint BLOB NOT NULL,
    manifold_zone TEXT CHECK(manifold_zone IN
        ('syntax_floor', 'semantic_bridge', 'structure_ripple', 'unknown')),
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
    schema_version INTEGER DEFAULT 1,
    model_id TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(request_id, step)
);
CREATE INDEX IF NOT EXISTS idx_fingerprints_request ON fingerprints(request_id);
CREATE INDEX IF NOT EXISTS idx_fingerprints_session ON fingerprints(session_id);
CREATE INDEX IF NOT EXISTS idx_fingerprints_cluster ON fingerprints(cluster_id);
CREATE INDEX IF NOT EXISTS idx_fingerprints_zone ON fingerprints(manifold_zone);
CREATE INDEX IF NOT EXISTS idx_fingerprints_created ON fingerprints(created_at);
CREATE INDEX IF NOT EXISTS idx_fingerprints_phase ON fingerprints(think_phase);
CREATE TABLE IF NOT EXISTS request_summary (
    request_id TEXT PRIMARY KEY, session_id TEXT, total_steps INTEGER NOT NULL,
    think_steps INTEGER DEFAULT 0, output_steps INTEGER DEFAULT 0,
    syntax_floor_pct REAL DEFAULT 0, semantic_bridge_pct REAL DEFAULT 0,
    structure_ripple_pct REAL DEFAULT 0, unknown_pct REAL DEFAULT 0, dominant_zone TEXT,
    mean_entropy REAL, mean_local_mass REAL, mean_long_mass REAL, expert_entropy_mean REAL,
    expert_switch_count INTEGER DEFAULT 0, unique_experts_used INTEGER DEFAULT 0,
    dominant_cluster_id INTEGER DEFAULT -1, cluster_transitions INTEGER DEFAULT 0,
    prompt_preview TEXT, response_preview TEXT, model_id TEXT, started_at TIMESTAMP,
    finished_at TIMESTAMP, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, name TEXT, model_id TEXT,
    request_count INTEGER DEFAULT 0, total_tokens INTEGER DEFAULT 0,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS discovery_runs (run_id TEXT PRIMARY KEY,
    time_window_start TIMESTAMP, time_window_end TIMESTAMP, fingerprint_count INTEGER,
    request_count INTEGER, cluster_count INTEGER, noise_count INTEGER, embedding_method TEXT,
    clustering_method TEXT, min_cluster_size INTEGER, output_dir TEXT,
    status TEXT CHECK(status IN ('running', 'completed', 'failed')), error_message TEXT,
    started_at TIMESTAMP, completed_at TIMESTAMP, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS clusters (cluster_id INTEGER PRIMARY KEY, run_id TEXT NOT NULL,
    label TEXT, description TEXT, dominant_zone TEXT, zone_confidence REAL, size INTEGER,
    persistence REAL, centroid_x REAL, centroid_y REAL, centroid_fingerprint BLOB,
    medoid_request_id TEXT, medoid_step INTEGER, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS prototypes (id INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id INTEGER NOT NULL, run_id TEXT NOT NULL, rank INTEGER NOT NULL,
    fingerprint_id INTEGER, request_id TEXT, step INTEGER, token_text TEXT,
    context_before TEXT, context_after TEXT, prompt_preview TEXT, x REAL, y REAL);
CREATE TABLE IF NOT EXISTS control_signals (id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL, step INTEGER NOT NULL, signal_type TEXT, payload TEXT,
    trigger_reason TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, description TEXT);
INSERT OR IGNORE INTO schema_version (version, description) VALUES (1, 'seed');
INSERT OR IGNORE INTO clusters (cluster_id, run_id, label, dominant_zone, size)
VALUES (-1, 'initial', 'Unassigned', 'unknown', 0);
CREATE VIEW IF NOT EXISTS zone_distribution_hourly AS
SELECT strftime('%Y-%m-%d %H:00:00', created_at) AS hour, manifold_zone, COUNT(*) AS count,
       AVG(manifold_confidence) AS avg_confidence
FROM fingerprints WHERE manifold_zone IS NOT NULL
GROUP BY hour, manifold_zone ORDER BY hour DESC;
CREATE VIEW IF NOT EXISTS cluster_growth AS
SELECT strftime('%Y-%m-%d', created_at) AS day, cluster_id, COUNT(*) AS count
FROM fingerprints WHERE cluster_id >= 0
GROUP BY day, cluster_id ORDER BY day DESC, count DESC;
CREATE TRIGGER IF NOT EXISTS update_request_summary_on_insert
AFTER INSERT ON fingerprints
BEGIN
    INSERT INTO request_summary (request_id, total_steps, model_id, started_at)
    VALUES (NEW.request_id, 1, NEW.model_id, NEW.created_at)
    ON CONFLICT(request_id) DO UPDATE SET
        total_steps = total_steps + 1,
        think_steps = think_steps + CASE WHEN NEW.think_phase = 'think' THEN 1 ELSE 0 END,
        output_steps = output_steps + CASE WHEN NEW.think_phase = 'output' THEN 1 ELSE 0 END,
        finished_at = NEW.created_at;
END;
"""

# The columns of the seed's request_summary that its trigger maintains.
TRIGGER_COLUMNS = (
    "request_id",
    "total_steps",
    "think_steps",
    "output_steps",
    "model_id",
    "started_at",
    "finished_at",
)


def create_seed_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SEED_SCHEMA)
    return conn


def seed_insert(
    conn: sqlite3.Connection, rows: list[dict[str, Any]], replace: bool = False
) -> None:
    """The seed sidecar's write: one INSERT per row, the 80-byte blob of struct.pack('<20f')."""
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    for row in rows:
        cols = dict(row)
        cols["fingerprint"] = struct.pack("<20f", *row["fingerprint"])
        names = ", ".join(cols)
        marks = ", ".join("?" for _ in cols)
        conn.execute(f"{verb} INTO fingerprints ({names}) VALUES ({marks})", list(cols.values()))


def trigger_summary(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    cols = ", ".join(TRIGGER_COLUMNS)
    return conn.execute(f"SELECT {cols} FROM request_summary ORDER BY request_id").fetchall()
