"""The online classifier: the job's labels, hdbscan's own prediction, the seed's result and
error shapes, threads, hot reload, damaged artifacts, and Arrow data."""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnfast import FingerprintStore
from attnfast.discovery import SidecarClassifier, classify_arrow
from attnfast.discovery.artifacts import file_entries, load_joblib
from attnfast.exceptions import ArtifactError, InvalidInputError, MissingFileError, ShapeError
from attnfast.synthetic import fingerprints
from discovery_data import Runs

MANIFOLD_KEYS = {"zone", "confidence", "cluster_id", "cluster_label", "cluster_probability"}


def test_the_classifier_gives_the_label_the_job_gave(discovery_runs: Runs) -> None:
    for run in (discovery_runs.full, discovery_runs.sampled):
        e = pq.read_table(run.run_dir / "embeddings.parquet").to_pydict()
        c = SidecarClassifier(run.run_dir.parent)
        out = c.classify_batch(discovery_runs.fps)
        job = np.asarray(e["cluster_id"])
        clustered = job >= 0
        agree = (out["cluster_id"][clustered] == job[clustered]).mean()
        assert agree >= 0.99, (run.run_id, agree)
        np.testing.assert_allclose(out["x"][clustered], np.asarray(e["x"])[clustered], atol=1e-4)


def test_it_agrees_with_hdbscans_approximate_predict(discovery_runs: Runs) -> None:
    """Held-out fingerprints through the seed's own models (UMAP.transform, then
    hdbscan.approximate_predict), loaded from the run's joblib files."""
    run = discovery_runs.sampled.run_dir
    with pytest.raises(InvalidInputError, match="trust_pickle=True"):
        load_joblib(run)
    with pytest.raises(MissingFileError, match="--write-joblib"):
        load_joblib(discovery_runs.full.run_dir, trust_pickle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import hdbscan

        seed = load_joblib(run, trust_pickle=True)  # our own test artifact
        models, clusterer = seed["embedding_models"], seed["clusterer"]
        held = discovery_runs.held_out[:400]
        reduced = models["pca"].transform(models["scaler"].transform(held.astype(np.float64)))
        xy = models["umap"].transform(reduced.astype(np.float32))
        want, _ = hdbscan.approximate_predict(clusterer, xy)
    got = SidecarClassifier(run).classify_batch(held)["cluster_id"]
    agree = (got == want).mean()
    assert agree >= 0.95, agree


def test_results_have_the_seeds_shapes(discovery_runs: Runs) -> None:
    c = SidecarClassifier(discovery_runs.full.run_dir.parent, reload_interval_seconds=300)
    fp = discovery_runs.fps[0]
    r = c.classify(fp)
    assert set(r) == {"manifold", "schema_version", "run_id"}
    assert set(r["manifold"]) == MANIFOLD_KEYS
    assert r["schema_version"] == 1
    assert r["run_id"] == discovery_runs.full.run_id
    assert r["manifold"]["zone"] in {"syntax_floor", "semantic_bridge", "structure_ripple"}
    assert c.classify(fp.tolist()) == r  # a list works as well
    for bad, message in [
        (fp[:19], "20 values, got 19"),
        (np.full(20, np.nan, np.float32), "not a v1 fingerprint"),
        (np.full(20, 0.5, np.float32), "summing to"),
        ("twenty", "could not convert"),
        (None, "got None"),
        (discovery_runs.fps[:5], "shape (5, 20)"),
    ]:
        e = c.classify(bad)
        assert set(e) == {"manifold", "error", "schema_version"}
        assert e["manifold"] == {
            "zone": "unknown",
            "confidence": 0.0,
            "cluster_id": -1,
            "cluster_label": "Error",
        }
        assert message in e["error"], e["error"]
    stats = c.stats
    assert stats["classification_count"] == 2
    assert stats["run_id"] == discovery_runs.full.run_id
    assert stats["cluster_count"] == discovery_runs.full.cluster_count
    batch = c.classify_batch(discovery_runs.fps[:10])
    assert batch["cluster_id"].dtype == np.int32
    assert batch["x"].dtype == np.float32
    assert batch["cluster_label"][0] == r["manifold"]["cluster_label"]
    assert c.stats["classification_count"] == 12
    with pytest.raises(ShapeError, match=r"\(T, 20\)"):
        c.classify_batch(np.zeros((3, 19), np.float32))
    with pytest.raises(InvalidInputError, match="row 1 is not a v1 fingerprint"):
        c.classify_batch(np.stack([fp, np.full(20, 0.5, np.float32)]))


def test_threads_share_one_classifier(discovery_runs: Runs) -> None:
    c = SidecarClassifier(discovery_runs.sampled.run_dir)
    want = c.classify_batch(discovery_runs.fps)["cluster_id"]
    results: list[np.ndarray] = []

    def work() -> None:
        for _ in range(5):
            results.append(c.classify_batch(discovery_runs.fps)["cluster_id"])
            c.classify(discovery_runs.fps[3])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    assert all((r == want).all() for r in results)
    assert c.stats["classification_count"] == len(want) * 21 + 20


def copy_run(src: Path, out: Path, run_id: str) -> Path:
    dst = out / run_id
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["run_id"] = run_id
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def point_latest(out: Path, run_id: str) -> None:
    tmp = out / "latest.tmp"
    tmp.symlink_to(run_id)
    os.replace(tmp, out / "latest")


def test_it_reloads_when_latest_moves(discovery_runs: Runs, tmp_path: Path) -> None:
    copy_run(discovery_runs.full.run_dir, tmp_path, "2026-01-01T00-00-00")
    point_latest(tmp_path, "2026-01-01T00-00-00")
    c = SidecarClassifier(tmp_path, reload_interval_seconds=0)
    assert c.classify(discovery_runs.fps[0])["run_id"] == "2026-01-01T00-00-00"
    copy_run(discovery_runs.sampled.run_dir, tmp_path, "2026-01-02T00-00-00")
    point_latest(tmp_path, "2026-01-02T00-00-00")
    assert c.classify(discovery_runs.fps[0])["run_id"] == "2026-01-02T00-00-00"
    assert c.stats["reloads"] == 1
    assert c.reload() is False
    # A broken new run keeps the old one serving.
    broken = copy_run(discovery_runs.full.run_dir, tmp_path, "2026-01-03T00-00-00")
    (broken / "sample.parquet").write_bytes(b"PAR1")
    point_latest(tmp_path, "2026-01-03T00-00-00")
    assert c.classify(discovery_runs.fps[0])["run_id"] == "2026-01-02T00-00-00"
    with pytest.raises(ArtifactError, match=r"sample\.parquet"):
        c.reload()


def test_damaged_or_foreign_artifacts_are_refused(discovery_runs: Runs, tmp_path: Path) -> None:
    src = discovery_runs.full.run_dir

    def damaged(name: str, change) -> Path:  # type: ignore[no-untyped-def]
        d = tmp_path / name
        shutil.copytree(src, d)
        change(d)
        return d

    truncated = damaged(
        "t",
        lambda d: (d / "sample.parquet").write_bytes((d / "sample.parquet").read_bytes()[:1000]),
    )
    with pytest.raises(ArtifactError, match=r"sample\.parquet.*(bytes|truncated)"):
        SidecarClassifier(truncated)

    def newer(d: Path) -> None:
        m = json.loads((d / "manifest.json").read_text())
        m["format_version"] = 99
        (d / "manifest.json").write_text(json.dumps(m))

    with pytest.raises(ArtifactError, match="format_version 99"):
        SidecarClassifier(damaged("v", newer))
    flipped = damaged(
        "f",
        lambda d: (d / "model.json").write_text(
            (d / "model.json").read_text().replace('"neighbours": 10', '"neighbours": 64')
        ),
    )
    with pytest.raises(ArtifactError, match=r"model\.json"):
        SidecarClassifier(flipped)

    def other_layout(d: Path) -> None:
        m = json.loads((d / "manifest.json").read_text())
        m["layout"] = "sglang"
        (d / "manifest.json").write_text(json.dumps(m))

    with pytest.raises(ArtifactError, match=r"says layout 'sglang', model\.json says 'v1'"):
        SidecarClassifier(damaged("l", other_layout))
    with pytest.raises(ArtifactError, match="not an attnfast discovery manifest"):
        SidecarClassifier(damaged("m", lambda d: (d / "manifest.json").write_text("[1, 2]")))
    with pytest.raises(MissingFileError):
        SidecarClassifier(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no discovery run"):
        SidecarClassifier(tmp_path / "empty")


def test_pickles_are_never_loaded(discovery_runs: Runs, tmp_path: Path) -> None:
    """A run folder whose joblib files would run code when unpickled: the classifier works
    and the code never runs."""
    import pickle

    d = tmp_path / "run"
    shutil.copytree(discovery_runs.sampled.run_dir, d)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    (d / "clusterer.joblib").write_bytes(pickle.dumps(Evil()))
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"] = file_entries(d)  # the manifest rewritten to match
    (d / "manifest.json").write_text(json.dumps(manifest))
    c = SidecarClassifier(d)
    assert c.classify(discovery_runs.fps[0])["manifold"]["cluster_id"] >= -1
    assert not marker.exists()


def test_arrow_tables_and_exported_parquet(discovery_runs: Runs, tmp_path: Path) -> None:
    run = discovery_runs.sampled.run_dir
    with FingerprintStore(discovery_runs.db) as store:
        store.export_parquet(tmp_path / "export")
    exported = pq.read_table(tmp_path / "export")
    out = classify_arrow(exported, run)
    assert out.num_rows == exported.num_rows
    fps = np.asarray(exported["fingerprint"].combine_chunks().flatten(), np.float32)
    fps = fps.reshape(-1, 20)
    v1 = np.asarray(exported["schema_version"]) == 1
    want = SidecarClassifier(run).classify_batch(fps[v1])
    np.testing.assert_array_equal(np.asarray(out["cluster_id"])[v1], want["cluster_id"])
    assert out["cluster_id"].null_count == (~v1).sum()  # SGLang rows: not this run's layout
    # A record batch, and variable-length lists, work the same.
    batch = pa.RecordBatch.from_pydict({"fingerprint": pa.array(fps[v1][:50].tolist())})
    got = classify_arrow(batch, run)
    np.testing.assert_array_equal(got["cluster_id"].to_numpy(), want["cluster_id"][:50])
    with pytest.raises(InvalidInputError, match="no 'vector' column"):
        classify_arrow(batch, run, column="vector")
    short = pa.table({"fingerprint": pa.array([[0.1] * 19])})
    with pytest.raises(ShapeError, match=r"row 0 .* 19 values"):
        classify_arrow(short, run)
    with pytest.raises(InvalidInputError, match="not a v1 fingerprint"):
        classify_arrow(
            pa.table({"fingerprint": pa.array(fingerprints(3, layout="sglang").tolist())}), run
        )
