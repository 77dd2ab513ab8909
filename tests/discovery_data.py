"""The planted data and discovery runs that the discovery tests share: fitting UMAP first
costs about 40 s of numba compilation per process, so the runs are made once per session."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnfast import FingerprintStore
from attnfast.discovery import DiscoveryResult, run_discovery
from attnfast.synthetic import fingerprints, planted

ROWS = 3000
HELD_OUT = 1000
CLUSTERS = 8
STEPS = 60  # per request
SGLANG_ROWS = 240


@dataclass
class Runs:
    db: Path
    full: DiscoveryResult
    sampled: DiscoveryResult
    sampled_db: Path
    truth: np.ndarray
    fps: np.ndarray
    held_out: np.ndarray
    held_out_truth: np.ndarray


def planted_db(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A store with ROWS planted v1 fingerprints (requests of STEPS steps, token texts,
    think then output phases) and SGLANG_ROWS SGLang rows; returns the v1 rows and truth
    and HELD_OUT more drawn around the same centres."""
    fps, truth = planted(ROWS + HELD_OUT, clusters=CLUSTERS, noise=0.03, seed=5)
    stored, held = fps[:ROWS], fps[ROWS:]
    requests = [f"req-{i // STEPS:03d}" for i in range(ROWS)]
    steps = np.arange(ROWS) % STEPS
    with FingerprintStore(path) as store:
        store.append(
            requests,
            steps,
            stored,
            token_text=[f"tok{truth[i] % 5}" for i in range(ROWS)],
            think_phase=["think" if s < STEPS // 2 else "output" for s in steps],
        )
        store.append(
            [f"sg-{i // 40}" for i in range(SGLANG_ROWS)],
            np.arange(SGLANG_ROWS) % 40,
            fingerprints(SGLANG_ROWS, seed=9, layout="sglang"),
            layout="sglang",
        )
        store.flush()
    return stored, truth[:ROWS], held, truth[ROWS:]


def make_runs(root: Path) -> Runs:
    db = root / "planted.db"
    fps, truth, held, held_truth = planted_db(db)
    sampled_db = root / "sampled.db"
    shutil.copy(db, sampled_db)
    full = run_discovery(db, root / "full", progress=False)
    sampled = run_discovery(
        sampled_db, root / "sampled", sample_size=1500, write_joblib=True, progress=False
    )
    return Runs(db, full, sampled, sampled_db, truth, fps, held, held_truth)
