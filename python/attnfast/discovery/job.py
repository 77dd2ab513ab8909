"""The discovery job: fingerprints of a window in, clusters ("attention programs") out, as
artifacts, as the store's ``discovery_runs``/``clusters``/``prototypes`` tables, and as the
``cluster_id``/``cluster_probability`` of every fingerprint of the window.

At or below ``sample_size`` fingerprints the job is the seed's pipeline (StandardScaler, PCA,
UMAP, HDBSCAN on all of them). Above it, the fits run on a uniform sample and the Rust
classifier places every other fingerprint among the sample (docs/discovery.md says why and
what it costs in quality)."""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast import _core
from attnfast._time import check_window, now_us, to_us
from attnfast.discovery import artifacts, fit, summary
from attnfast.discovery.tables import record, write_tables
from attnfast.discovery.window import Window, read_window
from attnfast.exceptions import AttnfastError, InvalidInputError, MissingFileError
from attnfast.layout import Layout
from attnfast.store import FingerprintStore

#: Sample points that vote on the placement of a fingerprint, and index leaves searched.
NEIGHBOURS = 10
SEARCH_LEAVES = 1
#: The longest window that --hours takes (about a century).
MAX_HOURS = 876_000
#: Seeds the libraries take (numpy's and scikit-learn's random_state).
MAX_SEED = 2**32 - 1
#: Rows placed per progress update.
CHUNK = 200_000

LIBRARIES = (
    "attnfast",
    "numpy",
    "scikit-learn",
    "umap-learn",
    "hdbscan",
    "pynndescent",
    "numba",
    "pyarrow",
)


class DiscoveryError(AttnfastError):
    """A discovery run that could not finish: an empty window, too few fingerprints, a fit
    that failed. Its run is recorded as ``failed`` with this message."""


@dataclass
class DiscoveryResult:
    """What a run did: its id and folder, the counts, and the time of each stage (seconds)."""

    run_id: str
    run_dir: Path
    fingerprint_count: int
    request_count: int
    cluster_count: int
    noise_count: int
    sampled: bool
    fit_count: int
    stages: dict[str, float]
    manifest: dict[str, Any] = field(repr=False)

    @property
    def clustered_share(self) -> float:
        return 1.0 - self.noise_count / max(self.fingerprint_count, 1)


@dataclass
class Parameters:
    min_cluster_size: int = 50
    min_samples: int = 10
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    pca_components: int = 50
    prototypes: int = 5
    sample_size: int = 100_000
    seed: int = 42
    layout: str = "v1"

    def check(self) -> None:
        for name in (
            "min_cluster_size",
            "min_samples",
            "umap_neighbors",
            "pca_components",
            "prototypes",
            "sample_size",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
        if self.min_cluster_size < 2:
            raise InvalidInputError(
                f"min_cluster_size must be at least 2, got {self.min_cluster_size}"
            )
        if self.umap_neighbors < 2:
            raise InvalidInputError(f"umap_neighbors must be at least 2, got {self.umap_neighbors}")
        if not isinstance(self.umap_min_dist, int | float) or not 0 <= self.umap_min_dist <= 1:
            raise InvalidInputError(f"umap_min_dist must be in [0, 1], got {self.umap_min_dist!r}")
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed <= MAX_SEED
        ):
            raise InvalidInputError(
                f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}"
            )
        Layout.of(self.layout)


class Stages:
    """Times each stage and shows it (a spinner, or a bar where the stage counts rows)."""

    def __init__(self, show: bool) -> None:
        self.times: dict[str, float] = {}
        self.progress: Any = None
        if show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.progress.start()

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Any]:
        task = self.progress.add_task(name, total=total) if self.progress else None
        start = time.perf_counter()

        def advance(n: int) -> None:
            if task is not None:
                self.progress.advance(task, n)

        try:
            yield advance
        finally:
            self.times[name] = round(time.perf_counter() - start, 4)
            if task is not None:
                self.progress.update(task, total=total or 1, completed=total or 1)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _utc(us: int) -> str:
    """The seed's TIMESTAMP text (CURRENT_TIMESTAMP's format, UTC)."""
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _new_run_id(output: Path, store: FingerprintStore) -> str:
    base = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H-%M-%S")
    run_id, n = base, 1
    while (output / run_id).exists() or store.sql(
        "SELECT 1 FROM discovery_runs WHERE run_id = ?", [run_id]
    ):
        run_id, n = f"{base}-{n}", n + 1
    return run_id


def existing_database(db: str | Path) -> Path:
    """A fingerprint database to read: it must exist and hold a store (attnfast's or the
    seed's). Reading jobs never turn an empty or foreign file into one."""
    import sqlite3

    db = Path(db)
    if db.is_dir():
        raise InvalidInputError(f"{db} is a folder, not a database")
    if not db.is_file():
        raise MissingFileError(f"{db}: no such database")
    if db.stat().st_size == 0:
        raise InvalidInputError(f"{db} is an empty file, not a fingerprint database")
    # Read-only, and without a -wal file beside it also immutable: then SQLite creates no -wal
    # and -shm files (a failed command leaves nothing new) and the main file holds everything.
    # With one, the database is in use or not checkpointed: read it as SQLite reads it.
    immutable = "" if db.with_name(db.name + "-wal").exists() else "&immutable=1"
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro{immutable}", uri=True)
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise InvalidInputError(f"{db} is not an SQLite database ({e})") from None
    if not names & {"af_meta", "fingerprints"}:
        raise InvalidInputError(
            f"{db} holds no fingerprints (no fingerprint store in it): nothing to discover"
        )
    return db


def _window(hours: float | None, since: Any, until: Any) -> tuple[int, int]:
    if hours is not None and (since is not None or until is not None):
        raise InvalidInputError("give --hours or --since/--until, not both")
    end = now_us() if until is None else to_us(until, "until")
    if since is not None:
        start = to_us(since, "since")
    else:
        h = 24.0 if hours is None else hours
        # At most about a century: beyond it the window starts before 1970.
        if isinstance(h, bool) or not isinstance(h, int | float) or not 0 < h <= MAX_HOURS:
            raise InvalidInputError(
                f"hours must be a positive number of at most {MAX_HOURS:,}, got {hours!r}"
            )
        start = end - int(h * 3600e6)
    check_window(start, end)
    if start >= end:
        raise InvalidInputError(
            f"the window is empty: since ({_utc(start)}) is not before until ({_utc(end)})"
        )
    return start, end


def run_discovery(
    db: str | Path,
    output: str | Path,
    *,
    hours: float | None = None,
    since: Any = None,
    until: Any = None,
    min_cluster_size: int = 50,
    min_samples: int = 10,
    umap_neighbors: int = 15,
    umap_min_dist: float = 0.1,
    pca_components: int = 50,
    prototypes: int = 5,
    sample_size: int = 100_000,
    seed: int = 42,
    layout: str = "v1",
    keep: int | None = None,
    write_joblib: bool = False,
    progress: bool | None = None,
) -> DiscoveryResult:
    """Runs discovery on the fingerprints of ``db`` in a window (the last ``hours``, default
    24, or ``since``/``until``), writes the run folder under ``output`` and the store's tables,
    and returns what it did. Raises :class:`DiscoveryError` (after recording the run as
    ``failed``) when the window holds too few fingerprints of ``layout``."""
    params = Parameters(
        min_cluster_size,
        min_samples,
        umap_neighbors,
        umap_min_dist,
        pca_components,
        prototypes,
        sample_size,
        seed,
        str(Layout.of(layout).value),
    )
    params.check()
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise InvalidInputError(f"keep must be a positive integer, got {keep!r}")
    start_us, end_us = _window(hours, since, until)
    db = existing_database(db)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"--output {output} is a file, not a folder")
    output.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if progress is None else progress
    with FingerprintStore(db) as store:
        run_id = _new_run_id(output, store)
        started = now_us()
        record(
            store,
            "INSERT INTO discovery_runs (run_id, time_window_start, time_window_end, "
            "embedding_method, clustering_method, min_cluster_size, output_dir, status, "
            "started_at) VALUES (?, ?, ?, 'pca+umap', 'hdbscan', ?, ?, 'running', ?)",
            [
                run_id,
                _utc(start_us),
                _utc(end_us),
                min_cluster_size,
                str(output / run_id),
                _utc(started),
            ],
        )
        staging = output / f".{run_id}.partial"
        stages = Stages(show)
        try:
            result = _run(
                store,
                params,
                run_id,
                start_us,
                end_us,
                output,
                staging,
                stages,
                write_joblib,
                started,
            )
        except BaseException as e:
            stages.close()
            shutil.rmtree(staging, ignore_errors=True)
            message = str(e) or type(e).__name__
            with contextlib.suppress(Exception):
                record(
                    store,
                    "UPDATE discovery_runs SET status = 'failed', error_message = ?, "
                    "completed_at = ? WHERE run_id = ?",
                    [message, _utc(now_us()), run_id],
                )
            if isinstance(e, AttnfastError | KeyboardInterrupt):
                raise
            raise DiscoveryError(f"discovery run {run_id} failed: {message}") from e
        stages.close()
    if keep is not None:
        artifacts.prune(output, keep)
    return result


def _run(
    store: FingerprintStore,
    params: Parameters,
    run_id: str,
    start_us: int,
    end_us: int,
    output: Path,
    staging: Path,
    stages: Stages,
    write_joblib: bool,
    started: int,
) -> DiscoveryResult:
    layout = Layout.of(params.layout)
    with stages.stage("read window"):
        window = read_window(store, start_us, end_us, layout)
    n = len(window)
    need = max(params.min_cluster_size, params.umap_neighbors + 1, 3)
    if n < need:
        skipped = ""
        if window.skipped_other_layout or window.skipped_invalid:
            skipped = (
                f" ({window.skipped_other_layout} of another layout and "
                f"{window.skipped_invalid} flagged invalid left out)"
            )
        raise DiscoveryError(
            f"the window {_utc(start_us)} to {_utc(end_us)} UTC holds {n} valid {layout.value} "
            f"fingerprint(s){skipped}; discovery needs at least {need} "
            "(--min-cluster-size and --umap-neighbors + 1): widen --hours or --since"
        )
    rng = np.random.default_rng(params.seed)
    sampled = n > params.sample_size
    fit_idx = np.sort(rng.choice(n, params.sample_size, replace=False)) if sampled else np.arange(n)
    fit_fps = window.fingerprints[fit_idx]
    components = fit.pca_components_used(params.pca_components, len(fit_idx))
    with stages.stage("scaler + PCA"):
        proj = fit.fit_projection(fit_fps, components, params.seed)
        placer = _classifier(layout, proj, fit_fps)
        points = placer.project(fit_fps)
    with stages.stage("UMAP"):
        reducer = fit.fit_umap(points, params.umap_neighbors, params.umap_min_dist, params.seed)
        fit_xy = np.ascontiguousarray(reducer.embedding_, dtype=np.float32)
    with stages.stage("HDBSCAN"):
        clusterer = fit.fit_hdbscan(fit_xy, params.min_cluster_size, params.min_samples)
        fit_labels = np.asarray(clusterer.labels_, dtype=np.int32)
        fit_prob = np.asarray(clusterer.probabilities_, dtype=np.float32)
    classifier = _classifier(layout, proj, fit_fps, fit_xy, fit_labels, fit_prob)
    xy = np.empty((n, 2), np.float32)
    labels = np.empty(n, np.int32)
    prob = np.empty(n, np.float32)
    xy[fit_idx] = fit_xy
    labels[fit_idx] = fit_labels
    prob[fit_idx] = fit_prob
    in_sample = np.zeros(n, bool)
    in_sample[fit_idx] = True
    if sampled:
        rest = np.flatnonzero(~in_sample)
        with stages.stage("place the rest", total=len(rest)) as advance:
            for s in range(0, len(rest), CHUNK):
                idx = rest[s : s + CHUNK]
                x, y, c, p = classifier.assign(np.ascontiguousarray(window.fingerprints[idx]))
                xy[idx, 0], xy[idx, 1], labels[idx], prob[idx] = x, y, c, p
                advance(len(idx))
    with stages.stage("zones + clusters"):
        zone_codes, zone_conf = _core.zone_codes(window.fingerprints)
        persistence = np.asarray(getattr(clusterer, "cluster_persistence_", []), np.float64)
        rows = summary.cluster_rows(
            labels=labels,
            xy=xy,
            fps=window.fingerprints,
            zone_codes=zone_codes,
            persistence=persistence,
            request_id=window.request_id,
            step=window.step,
        )
        protos = summary.prototype_indices(labels, xy, rows, params.prototypes)
        summary.finish_labels(rows, protos, window.fingerprints, labels, window.token_text)
        requests = summary.request_embeddings(
            request_id=window.request_id,
            think_phase=window.think_phase,
            xy=xy,
            labels=labels,
            zone_codes=zone_codes,
        )
        previews = _prompt_previews(
            store, {window.request_id[i] for v in protos.values() for i in v}
        )
    noise = int((labels < 0).sum())
    counts = {
        "fingerprints": n,
        "requests": len(requests["request_id"]),
        "clusters": len(rows),
        "noise": noise,
        "fit": len(fit_idx),
        "placed": int(n - len(fit_idx)),
        "skipped_invalid": window.skipped_invalid,
        "skipped_other_layout": window.skipped_other_layout,
    }
    with stages.stage("write artifacts"):
        from attnfast.discovery.writer import write_run

        staging.mkdir()
        write_run(
            staging,
            run_id=run_id,
            window=window,
            params=params,
            proj=proj,
            neighbours=NEIGHBOURS,
            search_leaves=SEARCH_LEAVES,
            fit_idx=fit_idx,
            fit_xy=fit_xy,
            fit_labels=fit_labels,
            fit_prob=fit_prob,
            xy=xy,
            labels=labels,
            prob=prob,
            in_sample=in_sample,
            zone_codes=zone_codes,
            zone_conf=zone_conf,
            rows=rows,
            protos=protos,
            previews=previews,
            requests=requests,
            clusterer=clusterer,
            reducer=reducer,
            write_joblib=write_joblib,
        )
    with stages.stage("write store", total=n) as advance:
        write_tables(
            store,
            run_id=run_id,
            window=window,
            rows=rows,
            protos=protos,
            previews=previews,
            xy=xy,
            labels=labels,
            prob=prob,
            counts=counts,
        )
        advance(n)
    manifest = {
        "format": artifacts.FORMAT,
        "format_version": artifacts.FORMAT_VERSION,
        "attnfast_version": _core.__version__,
        "run_id": run_id,
        "layout": layout.value,
        "window": {
            "since": _utc(start_us),
            "until": _utc(end_us),
            "since_us": start_us,
            "until_us": end_us,
        },
        "mode": "sampled" if sampled else "full",
        "parameters": {
            **params.__dict__,
            "pca_components_used": components,
            "neighbours": NEIGHBOURS,
            "search_leaves": SEARCH_LEAVES,
        },
        "counts": counts,
        "pca_explained_variance_ratio": proj.explained_variance_ratio.round(6).tolist(),
        "stages": stages.times,
        "libraries": _versions(),
        "started_at": _utc(started),
        "completed_at": _utc(now_us()),
        "files": artifacts.file_entries(staging),
    }
    artifacts.write_json(staging / "manifest.json", manifest)
    run_dir = artifacts.publish(staging, output, run_id)
    return DiscoveryResult(
        run_id=run_id,
        run_dir=run_dir,
        fingerprint_count=n,
        request_count=counts["requests"],
        cluster_count=len(rows),
        noise_count=noise,
        sampled=sampled,
        fit_count=len(fit_idx),
        stages=stages.times,
        manifest=manifest,
    )


def _classifier(
    layout: Layout,
    proj: fit.ProjectionFit,
    fps: NDArray[np.float32],
    xy: NDArray[np.float32] | None = None,
    labels: NDArray[np.int32] | None = None,
    prob: NDArray[np.float32] | None = None,
) -> Any:
    """The Rust classifier of a fit; without the fit's placements, only to project with."""
    n = len(fps)
    xy = np.zeros((n, 2), np.float32) if xy is None else xy
    return _core.Classifier(
        layout.value,
        proj.scaler_mean.tolist(),
        proj.scaler_scale.tolist(),
        proj.pca_mean.tolist(),
        proj.pca_components,
        fps,
        np.ascontiguousarray(xy[:, 0]),
        np.ascontiguousarray(xy[:, 1]),
        np.full(n, -1, np.int32) if labels is None else labels,
        np.zeros(n, np.float32) if prob is None else prob,
        NEIGHBOURS,
        SEARCH_LEAVES,
    )


def _prompt_previews(store: FingerprintStore, request_ids: set[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for rid in sorted(request_ids):
        rows = store.sql("SELECT prompt_preview FROM request_summary WHERE request_id = ?", [rid])
        out[rid] = rows[0]["prompt_preview"] if rows else None
    return out


__all__ = ["DiscoveryError", "DiscoveryResult", "Window", "run_discovery"]
