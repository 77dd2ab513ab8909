"""The online classifier: the seed's ``SidecarClassifier``, on the Rust core.

A run's artifacts are checked against their manifest, then the Rust classifier loads
``model.json`` and ``sample.parquet``; each fingerprint is projected, its nearest sample points
found and their clusters voted on, with the interpreter released. Result shapes are the
seed's (docs/discovery.md); ``classify`` answers bad input with the seed's error shape rather
than raising, ``classify_batch`` raises."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast import _core
from attnfast.discovery import artifacts
from attnfast.exceptions import ArtifactError, InvalidInputError, ShapeError
from attnfast.fingerprint import FINGERPRINT_DIM, ZONES

SCHEMA_VERSION = 1
_ZONE_NAMES = np.asarray(ZONES, dtype=object)


@dataclass(frozen=True)
class LoadedRun:
    """One run's classifier and cluster table; replaced whole on reload."""

    run_id: str
    run_dir: Path
    layout: str
    core: Any
    labels: dict[int, str]
    zones: dict[int, tuple[str, float]]
    loaded_at: float


def load_run(run_dir: Path) -> LoadedRun:
    """Checks and loads one run folder. Nothing pickled is read: the classifier needs none of
    the seed's joblib files (``artifacts.load_joblib`` reads them, on explicit trust)."""
    manifest = artifacts.read_manifest(run_dir)
    core = _core.Classifier.load(str(run_dir))
    if core.layout != manifest.get("layout"):
        raise ArtifactError(
            f"{run_dir}: manifest.json says layout {manifest.get('layout')!r}, model.json says "
            f"{core.layout!r}"
        )
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(
            run_dir / "clusters.parquet",
            columns=["cluster_id", "label", "dominant_zone", "zone_confidence"],
        )
    except Exception as e:  # pyarrow raises several classes for damaged files
        raise ArtifactError(f"{run_dir / 'clusters.parquet'}: not readable ({e})") from None
    ids = table["cluster_id"].to_pylist()
    labels = dict(zip(ids, table["label"].to_pylist(), strict=True))
    zones = {
        c: (z, float(conf))
        for c, z, conf in zip(
            ids,
            table["dominant_zone"].to_pylist(),
            table["zone_confidence"].to_pylist(),
            strict=True,
        )
    }
    return LoadedRun(
        str(manifest["run_id"]), run_dir, str(manifest["layout"]), core, labels, zones, time.time()
    )


def _error_result(message: str) -> dict[str, Any]:
    return {
        "manifold": {
            "zone": "unknown",
            "confidence": 0.0,
            "cluster_id": -1,
            "cluster_label": "Error",
        },
        "error": message,
        "schema_version": SCHEMA_VERSION,
    }


def as_rows(vectors: Any, what: str = "fingerprints") -> NDArray[np.float32]:
    """``(T, 20)`` C-contiguous float32, or a ShapeError saying what arrived."""
    a = np.asarray(vectors)
    if a.dtype.kind not in "fiu" or a.dtype.kind == "c":
        raise ShapeError(f"{what} must be numbers, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2 or a.shape[1] != FINGERPRINT_DIM:
        raise ShapeError(f"{what} must be (T, {FINGERPRINT_DIM}), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


class SidecarClassifier:
    """Classifies fingerprints with the newest discovery run under ``discovery_dir`` (its
    ``latest``, else its newest run folder; or ``discovery_dir`` itself if it is a run folder).
    Reloads when ``latest`` moves to another run, checking at most every
    ``reload_interval_seconds``. Safe to share between threads."""

    def __init__(
        self,
        discovery_dir: str | Path,
        reload_interval_seconds: float = 300,
    ) -> None:
        if (
            isinstance(reload_interval_seconds, bool)
            or not isinstance(reload_interval_seconds, int | float)
            or not reload_interval_seconds >= 0
        ):
            raise InvalidInputError(
                f"reload_interval_seconds must be a number >= 0, got {reload_interval_seconds!r}"
            )
        self.discovery_dir = Path(discovery_dir)
        self.reload_interval_seconds = float(reload_interval_seconds)
        self._lock = threading.Lock()
        self._count = 0
        self._reloads = 0
        self._run = load_run(artifacts.resolve_run(self.discovery_dir))
        self._checked = time.monotonic()

    # -- runs ----------------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self._run.run_id

    @property
    def run_dir(self) -> Path:
        return self._run.run_dir

    def reload(self) -> bool:
        """Loads the run ``discovery_dir`` names now if it is another run; returns whether it
        changed. A run that fails its checks raises and leaves the current one in use."""
        with self._lock:
            self._checked = time.monotonic()
            run_dir = artifacts.resolve_run(self.discovery_dir)
            manifest = artifacts.read_manifest(run_dir, verify=False)
            if manifest.get("run_id") == self._run.run_id and run_dir == self._run.run_dir:
                return False
            self._run = load_run(run_dir)
            self._reloads += 1
            return True

    def _maybe_reload(self) -> None:
        if time.monotonic() - self._checked >= self.reload_interval_seconds:
            try:
                self.reload()
            except Exception:  # a broken new run: keep serving the old one until it is fixed
                self._checked = time.monotonic()

    # -- classification ------------------------------------------------------------------------

    def classify(self, vec: Any) -> dict[str, Any]:
        """One fingerprint (20 numbers) in the seed's result shape; bad input gets the seed's
        error shape with a message saying what was wrong."""
        self._maybe_reload()
        run = self._run
        try:
            if vec is None:
                raise ShapeError(f"a fingerprint is a list of {FINGERPRINT_DIM} numbers, got None")
            fp = np.asarray(vec, dtype=np.float32)
            if fp.ndim != 1:
                raise ShapeError(
                    f"a fingerprint is a list of {FINGERPRINT_DIM} numbers, got an array of "
                    f"shape {fp.shape} (classify_batch takes many)"
                )
            if fp.shape[0] != FINGERPRINT_DIM:
                raise ShapeError(f"a fingerprint has {FINGERPRINT_DIM} values, got {fp.shape[0]}")
            fp = np.ascontiguousarray(fp)
            _, _, cluster, probability = run.core.assign_one(fp)
        except (ValueError, TypeError) as e:
            return _error_result(str(e))
        zone, confidence = self._zone(run, fp.reshape(1, -1), cluster)
        with self._lock:
            self._count += 1
        return {
            "manifold": {
                "zone": zone,
                "confidence": confidence,
                "cluster_id": int(cluster),
                "cluster_label": run.labels.get(int(cluster), "Noise"),
                "cluster_probability": float(probability),
            },
            "schema_version": SCHEMA_VERSION,
            "run_id": run.run_id,
        }

    @staticmethod
    def _zone(run: LoadedRun, fp: NDArray[np.float32], cluster: int) -> tuple[str, float]:
        # v1: the fingerprint's own zone by the seed's rules (what the job gives every row);
        # other layouts have no rules, so the cluster's majority zone.
        if run.layout == "v1":
            codes, conf = _core.zone_codes(fp)
            return ZONES[int(codes[0])], float(conf[0])
        return run.zones.get(int(cluster), ("unknown", 0.0))

    def classify_batch(self, vectors: Any) -> dict[str, NDArray[Any]]:
        """``(T, 20)`` fingerprints: numpy columns ``cluster_id``, ``cluster_probability``,
        ``x``, ``y``, ``zone``, ``confidence`` (and ``cluster_label``). Raises on bad input,
        naming the first bad row."""
        self._maybe_reload()
        run = self._run
        fps = as_rows(vectors)
        x, y, cluster, probability = run.core.assign(fps)
        if run.layout == "v1":
            codes, confidence = _core.zone_codes(fps)
            zone = _ZONE_NAMES[codes]
        else:
            zone = np.asarray(
                [run.zones.get(c, ("unknown", 0.0))[0] for c in cluster.tolist()], dtype=object
            )
            confidence = np.asarray(
                [run.zones.get(c, ("unknown", 0.0))[1] for c in cluster.tolist()], dtype=np.float32
            )
        names = np.asarray(
            [run.labels.get(c, "Noise") for c in range(-1, len(run.labels))], dtype=object
        )
        with self._lock:
            self._count += len(fps)
        return {
            "cluster_id": cluster,
            "cluster_probability": probability,
            "x": x,
            "y": y,
            "zone": zone,
            "confidence": confidence,
            "cluster_label": names[cluster + 1],
        }

    @property
    def stats(self) -> dict[str, Any]:
        """The seed's counters (``classification_count``, ``run_id``, ``cluster_count``), with
        the run folder, its layout, when it was loaded and how many reloads there were."""
        run = self._run
        return {
            "classification_count": self._count,
            "run_id": run.run_id,
            "cluster_count": len(run.labels),
            "run_dir": str(run.run_dir),
            "layout": run.layout,
            "loaded_at": run.loaded_at,
            "reloads": self._reloads,
            "sample_rows": run.core.sample_rows,
        }
