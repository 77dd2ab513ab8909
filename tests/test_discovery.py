"""The discovery job against independent references: the planted truth, the seed's pipeline
run directly with scikit-learn, umap-learn and hdbscan, and the seed's SQL over the store."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import adjusted_rand_score

from attnfast import FingerprintStore
from attnfast.discovery import DiscoveryError, run_discovery
from attnfast.discovery.artifacts import prune
from attnfast.exceptions import InvalidInputError, MissingFileError
from discovery_data import CLUSTERS, ROWS, SGLANG_ROWS, Runs

SEED_COLUMNS = {
    "embeddings.parquet": {
        "fingerprint_id",
        "request_id",
        "step",
        "x",
        "y",
        "cluster_id",
        "cluster_prob",
        "zone_label",
        "zone_confidence",
    },
    "clusters.parquet": {
        "cluster_id",
        "run_id",
        "label",
        "description",
        "dominant_zone",
        "zone_confidence",
        "size",
        "persistence",
        "centroid_x",
        "centroid_y",
        "centroid_fingerprint",
        "medoid_request_id",
        "medoid_step",
    },
    "prototypes.parquet": {
        "cluster_id",
        "run_id",
        "rank",
        "fingerprint_id",
        "request_id",
        "step",
        "token_text",
        "context_before",
        "context_after",
        "prompt_preview",
        "x",
        "y",
    },
}


def table(run_dir: Path, name: str) -> dict[str, Any]:
    return pq.read_table(run_dir / name).to_pydict()  # type: ignore[no-any-return]


def test_the_full_fit_finds_the_planted_clusters(discovery_runs: Runs) -> None:
    r = discovery_runs
    e = table(r.full.run_dir, "embeddings.parquet")
    labels = np.asarray(e["cluster_id"])
    clustered = (r.truth >= 0) & (labels >= 0)
    ari = adjusted_rand_score(r.truth[clustered], labels[clustered])
    assert ari >= 0.9, ari
    assert r.full.cluster_count >= CLUSTERS - 1
    assert r.full.clustered_share > 0.8, r.full.clustered_share
    assert not r.full.sampled
    assert r.full.fit_count == ROWS
    counts = r.full.manifest["counts"]
    assert counts["fingerprints"] == ROWS
    assert counts["skipped_other_layout"] == SGLANG_ROWS  # layouts are never mixed


def test_at_or_below_the_sample_size_it_is_the_seeds_pipeline(discovery_runs: Runs) -> None:
    """scikit-learn's scaler and PCA, umap-learn and hdbscan, called as the seed calls them,
    on the same rows: the same clusters and nearly the same embedding."""
    import hdbscan
    import umap
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    r = discovery_runs
    e = table(r.full.run_dir, "embeddings.parquet")
    with FingerprintStore(r.db) as store:
        rows = store.read(layout="v1", format="numpy")
    order = {int(i): k for k, i in enumerate(rows["id"])}
    fps = rows["fingerprint"][[order[i] for i in e["fingerprint_id"]]]
    scaled = StandardScaler().fit_transform(fps.astype(np.float64))
    reduced = PCA(n_components=20, random_state=42).fit_transform(scaled)  # 50 capped at 20
    xy = umap.UMAP(
        n_neighbors=15, min_dist=0.1, n_components=2, metric="euclidean", random_state=42
    ).fit_transform(reduced.astype(np.float32))
    labels = (
        hdbscan.HDBSCAN(
            min_cluster_size=50,
            min_samples=10,
            cluster_selection_method="eom",
            prediction_data=True,
        )
        .fit(xy)
        .labels_
    )
    assert adjusted_rand_score(labels, e["cluster_id"]) >= 0.99
    assert r.full.manifest["parameters"]["pca_components_used"] == 20


def test_a_sampled_fit_agrees_with_the_full_fit(discovery_runs: Runs) -> None:
    r = discovery_runs
    assert r.sampled.sampled
    assert r.sampled.fit_count == 1500
    full = np.asarray(table(r.full.run_dir, "embeddings.parquet")["cluster_id"])
    sampled_e = table(r.sampled.run_dir, "embeddings.parquet")
    sampled = np.asarray(sampled_e["cluster_id"])
    assert sum(sampled_e["in_sample"]) == 1500
    both = (full >= 0) & (sampled >= 0)
    assert adjusted_rand_score(full[both], sampled[both]) >= 0.9
    assert abs(r.full.clustered_share - r.sampled.clustered_share) <= 0.05
    clustered = (r.truth >= 0) & (sampled >= 0)
    assert adjusted_rand_score(r.truth[clustered], sampled[clustered]) >= 0.9


def test_seeded_runs_are_reproducible(discovery_runs: Runs, tmp_path: Path) -> None:
    again = run_discovery(discovery_runs.db, tmp_path / "again", progress=False)
    a = table(discovery_runs.full.run_dir, "embeddings.parquet")
    b = table(again.run_dir, "embeddings.parquet")
    assert a["cluster_id"] == b["cluster_id"]
    np.testing.assert_allclose(a["x"], b["x"], atol=1e-5)


def test_the_run_folder_holds_the_seeds_files_and_a_manifest(discovery_runs: Runs) -> None:
    r = discovery_runs.full
    out = r.run_dir.parent
    latest = out / "latest"
    assert latest.is_symlink()
    assert os.readlink(latest) == r.run_id
    for name, columns in SEED_COLUMNS.items():
        assert columns <= set(pq.read_schema(r.run_dir / name).names), name
    requests = table(r.run_dir, "request_embeddings.parquet")
    assert len(requests["request_id"]) == ROWS // 60
    assert {"dominant_zone", "think_dominant_cluster", "output_dominant_cluster"} <= set(requests)
    manifest = json.loads((r.run_dir / "manifest.json").read_text())
    assert manifest["run_id"] == r.run_id
    assert manifest["mode"] == "full"
    assert set(manifest["stages"]) >= {"read window", "scaler + PCA", "UMAP", "HDBSCAN"}
    assert {"umap-learn", "hdbscan", "scikit-learn", "numpy", "attnfast"} <= set(
        manifest["libraries"]
    )
    assert manifest["parameters"]["min_cluster_size"] == 50
    assert set(manifest["files"]) >= {"model.json", "sample.parquet", "embeddings.parquet"}
    # Pickles only on request.
    assert not list(r.run_dir.glob("*.joblib"))
    assert {p.name for p in discovery_runs.sampled.run_dir.glob("*.joblib")} == {
        "clusterer.joblib",
        "embedding_models.joblib",
    }
    assert not list(out.glob(".*"))  # no staging folder or link left


def test_the_store_holds_the_run_its_clusters_and_the_rows_clusters(
    discovery_runs: Runs,
) -> None:
    r = discovery_runs.full
    e = table(r.run_dir, "embeddings.parquet")
    clusters = table(r.run_dir, "clusters.parquet")
    with FingerprintStore(discovery_runs.db) as store:
        run = store.sql("SELECT * FROM discovery_runs WHERE run_id = ?", [r.run_id])[0]
        assert run["status"] == "completed"
        assert (run["fingerprint_count"], run["cluster_count"], run["noise_count"]) == (
            ROWS,
            r.cluster_count,
            r.noise_count,
        )
        stored = store.sql(
            "SELECT id, cluster_id, cluster_probability FROM fingerprints "
            "WHERE schema_version = 1 ORDER BY id"
        )
        by_id = {row["id"]: row for row in stored}
        assert [by_id[i]["cluster_id"] for i in e["fingerprint_id"]] == e["cluster_id"]
        np.testing.assert_allclose(
            [by_id[i]["cluster_probability"] for i in e["fingerprint_id"]],
            e["cluster_prob"],
            rtol=1e-6,
        )
        table_rows = store.sql(
            "SELECT cluster_id, label, size, dominant_zone FROM clusters "
            "WHERE cluster_id >= 0 ORDER BY cluster_id"
        )
        assert [t["label"] for t in table_rows] == clusters["label"]
        assert [t["size"] for t in table_rows] == clusters["size"]
        # The seed's views, against SQL over the rows themselves.
        growth = {(g["cluster_id"], g["count"]) for g in store.sql("SELECT * FROM cluster_growth")}
        want = {
            (g["cluster_id"], g["n"])
            for g in store.sql(
                "SELECT cluster_id, count(*) AS n FROM fingerprints WHERE cluster_id >= 0 "
                "GROUP BY cluster_id"
            )
        }
        assert growth == want
        summaries = {s["request_id"]: s for s in store.sql("SELECT * FROM request_summary")}
        rows = store.sql("SELECT request_id, step, cluster_id FROM fingerprints ORDER BY id")
        # The newest run's (a later test may have run again, with the same result).
        protos = store.sql("SELECT * FROM prototypes ORDER BY cluster_id, rank")
        newest = store.sql(
            "SELECT run_id FROM discovery_runs WHERE status = 'completed' "
            "ORDER BY completed_at DESC, run_id DESC LIMIT 1"
        )[0]["run_id"]
    per_request: dict[str, list[int]] = {}
    for row in rows:
        per_request.setdefault(row["request_id"], []).append(row["cluster_id"])
    for rid, cl in per_request.items():
        counts = Counter(c for c in cl if c >= 0)
        top = max(counts.values()) if counts else 0
        dominant = min(c for c, n in counts.items() if n == top) if counts else -1
        transitions = sum(a >= 0 and b >= 0 and a != b for a, b in itertools.pairwise(cl))
        assert summaries[rid]["dominant_cluster_id"] == dominant, rid
        assert summaries[rid]["cluster_transitions"] == transitions, rid
    # Prototypes: k per cluster, rank 0 nearest the cluster's 2-D mean.
    assert len(protos) == 5 * r.cluster_count
    assert {p["run_id"] for p in protos} == {newest}
    centre = {
        c: (x, y)
        for c, x, y in zip(
            clusters["cluster_id"], clusters["centroid_x"], clusters["centroid_y"], strict=True
        )
    }
    for c in centre:
        mine = [p for p in protos if p["cluster_id"] == c]
        d = [(p["x"] - centre[c][0]) ** 2 + (p["y"] - centre[c][1]) ** 2 for p in mine]
        assert d == sorted(d)
        assert [p["rank"] for p in mine] == list(range(5))
        assert all(p["token_text"].startswith("tok") for p in mine)


def test_clusters_get_readable_labels_and_descriptions(discovery_runs: Runs) -> None:
    clusters = table(discovery_runs.full.run_dir, "clusters.parquet")
    assert len(set(clusters["label"])) == len(clusters["label"])  # distinct
    for label, zone, text in zip(
        clusters["label"], clusters["dominant_zone"], clusters["description"], strict=True
    ):
        assert label.startswith(zone.replace("_", " ").capitalize()), label
        assert "fingerprints" in text
        assert "stands out by" in text
        assert "tok" in text


def test_an_sglang_run_reads_sglang_rows_alone(discovery_runs: Runs, tmp_path: Path) -> None:
    result = run_discovery(
        discovery_runs.sampled_db,
        tmp_path / "sg",
        layout="sglang",
        min_cluster_size=20,
        progress=False,
    )
    assert result.fingerprint_count == SGLANG_ROWS
    assert result.manifest["counts"]["skipped_other_layout"] == ROWS
    model = json.loads((result.run_dir / "model.json").read_text())
    assert model["layout"] == "sglang"


def test_an_empty_window_fails_with_a_record_and_no_folder(
    discovery_runs: Runs, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(DiscoveryError, match="holds 0 valid v1 fingerprint"):
        run_discovery(
            discovery_runs.sampled_db, out, since="2001-01-01", until="2001-01-02", progress=False
        )
    assert list(out.iterdir()) == []
    with FingerprintStore(discovery_runs.sampled_db) as store:
        failed = store.sql("SELECT * FROM discovery_runs WHERE status = 'failed'")
    assert failed
    assert "holds 0 valid v1" in failed[-1]["error_message"]
    assert failed[-1]["completed_at"] is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_cluster_size": 1}, "min_cluster_size must be at least 2"),
        ({"umap_neighbors": 0}, "umap_neighbors must be a positive integer"),
        ({"umap_min_dist": 2.0}, "umap_min_dist"),
        ({"hours": 2, "since": "1h"}, "not both"),
        ({"hours": -1}, "hours must be a positive number"),
        ({"since": "1h", "until": "2h"}, "since"),
        ({"layout": "v9"}, "layout"),
        ({"keep": 0}, "keep must be a positive integer"),
        ({"hours": float("inf")}, "hours must be a positive number of at most"),
        ({"seed": 2**32}, "seed must be an integer from 0 to 4294967295"),
    ],
)
def test_bad_parameters_are_refused_before_anything_runs(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    db = tmp_path / "fp.db"
    with FingerprintStore(db) as store:
        store.flush()
    with pytest.raises(InvalidInputError, match=message):
        run_discovery(db, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()
    with pytest.raises(MissingFileError):
        run_discovery(tmp_path / "missing.db", tmp_path / "out", progress=False)


def test_files_that_hold_no_store_are_left_as_they_are(tmp_path: Path) -> None:
    import sqlite3

    (tmp_path / "zero.db").write_bytes(b"")
    empty = sqlite3.connect(tmp_path / "empty.db")
    empty.execute("PRAGMA user_version = 1")  # an SQLite file without tables
    empty.commit()
    empty.close()
    conn = sqlite3.connect(tmp_path / "other.db")
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    (tmp_path / "folder.db").mkdir()
    cases = {
        "zero.db": "empty file",
        "empty.db": "holds no fingerprints",
        "other.db": "holds no fingerprints",
        "folder.db": "is a folder",
    }
    for name, message in cases.items():
        before = (tmp_path / name).read_bytes() if (tmp_path / name).is_file() else None
        with pytest.raises(InvalidInputError, match=message):
            run_discovery(tmp_path / name, tmp_path / "out", progress=False)
        if before is not None:
            assert (tmp_path / name).read_bytes() == before, name


def test_keep_removes_all_but_the_newest_runs(tmp_path: Path) -> None:
    for name in (
        "2026-01-01T00-00-00",
        "2026-01-02T00-00-00",
        "2026-01-03T00-00-00",
        "2026-01-03T00-00-00-1",
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    (tmp_path / "notes").mkdir()  # not a run folder: left alone
    (tmp_path / "latest").symlink_to("2026-01-01T00-00-00")  # in use: never removed
    removed = prune(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["2026-01-02T00-00-00"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "2026-01-01T00-00-00",
        "2026-01-03T00-00-00",
        "2026-01-03T00-00-00-1",
        "latest",
        "notes",
    ]


def test_the_command_line(discovery_runs: Runs, tmp_path: Path) -> None:
    import subprocess
    import sys

    from typer.testing import CliRunner

    from attnfast.cli import app

    db = tmp_path / "fp.db"
    db.write_bytes(discovery_runs.db.read_bytes())
    done = CliRunner().invoke(
        app,
        [
            "discover",
            "--db",
            str(db),
            "--output",
            str(tmp_path / "o"),
            "--sample-size",
            "1000",
            "--keep",
            "1",
            "--json",
        ],
    )
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert result["mode"] == "sampled"
    assert result["counts"]["fit"] == 1000
    done = CliRunner().invoke(
        app, ["discover", "--db", str(db), "--output", str(tmp_path / "o"), "--keep", "1"]
    )
    assert done.exit_code == 0, done.output
    assert "clusters" in done.output
    assert "stages:" in done.output
    assert len([p for p in (tmp_path / "o").iterdir() if not p.is_symlink()]) == 1  # --keep 1
    # An empty window: one line, status 2, no output folder, a failed run record.
    attnfast = str(Path(sys.executable).with_name("attnfast"))
    failed = subprocess.run(
        [attnfast, "discover", "--db", str(db), "--output", str(tmp_path / "new"), "--since",
         "2001-01-01", "--until", "2001-01-02"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1
    assert "holds 0 valid v1" in failed.stderr
    assert not (tmp_path / "new").exists()
    with FingerprintStore(db) as store:
        assert (
            store.sql(
                "SELECT status FROM discovery_runs ORDER BY started_at DESC, rowid DESC LIMIT 1"
            )[0]["status"]
            == "failed"
        )


def test_the_report(discovery_runs: Runs, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from attnfast.cli import app
    from attnfast.discovery.report import build_report

    db, runs = discovery_runs.db, discovery_runs.full.run_dir.parent
    report = build_report(db, runs)
    with FingerprintStore(db) as store:
        want_zones = store.sql(
            "SELECT manifold_zone, count(*) AS n FROM fingerprints GROUP BY manifold_zone"
        )
    got = Counter()
    for z in report["zone_distribution_hourly"]:
        got[z["manifold_zone"]] += z["count"]
    assert got == {z["manifold_zone"]: z["n"] for z in want_zones if z["manifold_zone"]}
    assert (
        sum(g["count"] for g in report["cluster_growth"]) == ROWS - discovery_runs.full.noise_count
    )
    assert len(report["clusters"]) == discovery_runs.full.cluster_count
    assert report["latest_run"]["status"] == "completed"
    assert set(report["discovery"]["stages"]) >= {"UMAP", "HDBSCAN"}
    png = tmp_path / "plots"
    done = CliRunner().invoke(
        app, ["report", "--db", str(db), "--discovery", str(runs), "--png", str(png)]
    )
    assert done.exit_code == 0, done.output
    assert "Clusters of the newest run" in done.output
    assert "stages of" in done.output
    import matplotlib.image

    # The data is drawn: zone shares fill their plot (one hour of data too), points show.
    for name, least in (("zones.png", 0.15), ("embedding.png", 0.01)):
        assert (png / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(png / name)[..., :3]
        drawn = (pixels < 0.9).any(axis=-1).mean()
        assert drawn > least, (name, drawn)
    again = CliRunner().invoke(app, ["report", "--db", str(db), "--png", str(png)])
    assert again.exit_code == 2  # the plots exist: --overwrite replaces them
    done = CliRunner().invoke(app, ["report", "--db", str(db), "--format", "json"])
    assert json.loads(done.output)["rows"] == ROWS + SGLANG_ROWS
