"""Discovery and classification, side by side with the seed's way.

    .venv/bin/python benches/bench_discovery.py [--only job,classifier,ray]
        [--sizes 100000,1000000]   # add 10000000 once: about 15 minutes

1. job: planted fingerprints (12 centres, 3% noise, requests of 100 steps) in a store;
   ``attnfast.discovery.run_discovery`` at 100k (the seed's pipeline exactly: everything fits)
   and 1M (a 100k sample, the rest placed in Rust), and the seed's pipeline run directly at
   100k (StandardScaler, PCA, UMAP and HDBSCAN from their libraries on every row, its joblib
   pickles written), each in a fresh process so imports and numba compilation count; time per
   stage, peak memory, ARI against the planted truth on clustered points, share clustered.
   ``--sizes`` sets the sizes (10M once, for the record).
2. classifier: the 1M run's artifacts; held-out planted fingerprints through the Rust
   classifier (batched on one core, and one call at a time from Python: p50/p99), through
   ``UMAP.transform`` then ``hdbscan.approximate_predict`` (the seed's classifier), and through
   the seed's centroid-cosine fallback; agreement with the seed's classifier.
3. ray: an export of 2M rows classified by one process (``classify_arrow``) and by Ray Data
   on a local instance (``map_batches`` with ``ArrowClassifier``, one worker per core),
   warm; rows/s and whether the results are equal.

Results go to ``benches/results/discovery.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
RESULTS = HERE / "results"
CLUSTERS = 12
STEPS = 100


def make_db(path: Path, n: int, seed: int = 11) -> None:
    from attnfast import FingerprintStore
    from attnfast.synthetic import planted

    with FingerprintStore(path) as store:
        for start in range(0, n, 1_000_000):
            rows = min(1_000_000, n - start)
            fps, truth = planted(
                rows, clusters=CLUSTERS, noise=0.03, seed=seed + start, centre_seed=seed
            )
            np.save(path.with_name(f"truth-{start}.npy"), truth)
            ids = np.arange(start, start + rows)
            store.append(
                [f"r{i // STEPS}" for i in ids],
                ids % STEPS,
                fps,
                token_text=[f"t{t % 7}" for t in truth],
            )
        store.flush()


def truth_of(db: Path, n: int) -> np.ndarray:
    return np.concatenate([np.load(db.with_name(f"truth-{s}.npy")) for s in range(0, n, 1_000_000)])


def child_job(db: str, out: str, sample_size: int) -> dict[str, Any]:
    start = time.perf_counter()
    from attnfast.discovery import run_discovery

    r = run_discovery(db, out, sample_size=sample_size, progress=False)
    total = time.perf_counter() - start
    return {
        "seconds": total,
        "stages": r.stages,
        "clusters": r.cluster_count,
        "clustered_share": r.clustered_share,
        "run_dir": str(r.run_dir),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child_seed(db: str, out: str) -> dict[str, Any]:
    """The seed's job, as its code does it: every row through the libraries, pickles out."""
    import warnings

    start = time.perf_counter()
    stages: dict[str, float] = {}
    t = time.perf_counter()
    from attnfast import FingerprintStore

    with FingerprintStore(db) as store:
        fps = store.read(format="numpy")["fingerprint"]
    stages["read window"] = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import hdbscan
        import joblib
        import umap
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        t = time.perf_counter()
        scaler = StandardScaler().fit(fps)
        pca = PCA(n_components=20).fit(scaler.transform(fps))
        reduced = pca.transform(scaler.transform(fps))
        stages["scaler + PCA"] = time.perf_counter() - t
        t = time.perf_counter()
        reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, n_components=2, random_state=42)
        xy = reducer.fit_transform(reduced)
        stages["UMAP"] = time.perf_counter() - t
        t = time.perf_counter()
        clusterer = hdbscan.HDBSCAN(
            min_cluster_size=50,
            min_samples=10,
            cluster_selection_method="eom",
            prediction_data=True,
        ).fit(xy)
        stages["HDBSCAN"] = time.perf_counter() - t
        t = time.perf_counter()
        Path(out).mkdir(parents=True, exist_ok=True)
        joblib.dump(clusterer, Path(out) / "clusterer.joblib")
        joblib.dump(
            {"scaler": scaler, "pca": pca, "umap": reducer}, Path(out) / "embedding_models.joblib"
        )
        stages["write pickles"] = time.perf_counter() - t
    np.save(Path(out) / "labels.npy", clusterer.labels_)
    return {
        "seconds": time.perf_counter() - start,
        "stages": stages,
        "clusters": int(clusterer.labels_.max() + 1),
        "clustered_share": float((clusterer.labels_ >= 0).mean()),
        "pickle_mb": sum(p.stat().st_size for p in Path(out).glob("*.joblib")) / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def in_child(kind: str, *args: Any) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def ari(truth: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    m = (truth >= 0) & (labels >= 0)
    return float(adjusted_rand_score(truth[m], labels[m]))


def bench_job(tmp: Path, sizes: list[int]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    out: dict[str, Any] = {}
    for n in sizes:
        db = tmp / f"n{n}" / "fp.db"
        db.parent.mkdir()
        make_db(db, n)
        truth = truth_of(db, n)
        r = in_child("job", db, tmp / f"n{n}" / "runs", 100_000)
        labels = np.asarray(
            pq.read_table(Path(r["run_dir"]) / "embeddings.parquet", columns=["cluster_id"])[
                "cluster_id"
            ]
        )
        r["ari_truth"] = ari(truth, labels)
        out[f"attnfast {n:,}"] = r
        print(f"attnfast {n:,}: {r['seconds']:.1f} s, ARI {r['ari_truth']:.4f}", flush=True)
        if n == 100_000:
            s = in_child("seed", db, tmp / "seed")
            s["ari_truth"] = ari(truth, np.load(tmp / "seed" / "labels.npy"))
            out[f"seed pipeline {n:,}"] = s
            print(f"seed {n:,}: {s['seconds']:.1f} s, ARI {s['ari_truth']:.4f}", flush=True)
        if n == 1_000_000:
            out["artifacts_1m"] = r["run_dir"]
    return out


def bench_classifier(run_dir: Path) -> dict[str, Any]:
    import warnings

    from attnfast.discovery import SidecarClassifier
    from attnfast.synthetic import planted

    os.environ["ATTNFAST_NUM_THREADS"] = "1"  # read at first use of the pool: one core
    # Held out, around the run's centres (planted's centres depend on its seed only): the
    # 200k rows drawn after the first million.
    queries, _ = planted(1_200_000, clusters=CLUSTERS, noise=0.03, seed=11)
    queries = np.ascontiguousarray(queries[1_000_000:])
    c = SidecarClassifier(run_dir)
    best = min(_timed(lambda: c.classify_batch(queries)) for _ in range(3))
    ours = c.classify_batch(queries)["cluster_id"]
    single = []
    for q in queries[:20_000]:
        t = time.perf_counter_ns()
        c.classify(q)
        single.append(time.perf_counter_ns() - t)
    out: dict[str, Any] = {
        "rust_batch_rows_per_s": len(queries) / best,
        "rust_single_p50_us": float(np.percentile(single, 50) / 1e3),
        "rust_single_p99_us": float(np.percentile(single, 99) / 1e3),
    }
    # The seed's classifier: its models fitted the seed's way on the run's 100k sample (what
    # the seed's job would have pickled), then UMAP.transform and approximate_predict.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import hdbscan
        import pyarrow.parquet as pq
        import umap
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        sample = pq.read_table(run_dir / "sample.parquet").to_pydict()
        fps = np.asarray(sample["fingerprint"], np.float32)
        scaler = StandardScaler().fit(fps)
        pca = PCA(n_components=20, random_state=42).fit(scaler.transform(fps))
        reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=42).fit(
            pca.transform(scaler.transform(fps)).astype(np.float32)
        )
        clusterer = hdbscan.HDBSCAN(
            min_cluster_size=50,
            min_samples=10,
            cluster_selection_method="eom",
            prediction_data=True,
        ).fit(reducer.embedding_)
        few = queries[:5_000]
        t = time.perf_counter()
        xy = reducer.transform(pca.transform(scaler.transform(few)).astype(np.float32))
        seed_labels, _ = hdbscan.approximate_predict(clusterer, xy)
        seed_s = time.perf_counter() - t
    # The refit numbers its clusters its own way: agreement up to a relabelling (the label
    # each of our clusters maps to most often).
    ours_few = ours[:5_000]
    out["seed_rows_per_s"] = len(few) / seed_s
    out["agreement_with_seed_classifier"] = _agreement(ours_few, seed_labels)
    # The seed's fallback: the cluster whose centroid fingerprint is most cosine-similar.
    clusters = pq.read_table(run_dir / "clusters.parquet").to_pydict()
    centroids = np.asarray(clusters["centroid_fingerprint"], np.float32)
    norm = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    t = time.perf_counter()
    cos = np.argmax((queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ norm.T, axis=1)
    cos_s = time.perf_counter() - t
    cos_ids = np.asarray(clusters["cluster_id"])[cos]
    out["centroid_cosine_rows_per_s"] = len(queries) / cos_s
    out["centroid_cosine_agreement_with_rust"] = float((cos_ids == ours).mean())
    out["centroid_cosine_agreement_with_seed_classifier"] = _agreement(cos_ids[:5_000], seed_labels)
    out["batch_speedup_vs_seed_classifier"] = out["rust_batch_rows_per_s"] / out["seed_rows_per_s"]
    return out


def bench_ray(tmp: Path, rows: int = 2_000_000) -> dict[str, Any]:
    """Classifying an export of ``rows`` rows: one process (read the Parquet, classify_arrow)
    against Ray Data on a local instance (read_parquet, map_batches with one classifier per
    worker), both writing nothing: the rows are counted, and the results compared."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from attnfast import FingerprintStore
    from attnfast.discovery import ArrowClassifier, classify_arrow, run_discovery

    db = tmp / "ray" / "fp.db"
    db.parent.mkdir(parents=True)
    make_db(db, rows)
    run = run_discovery(db, tmp / "ray" / "runs", progress=False).run_dir
    export = tmp / "ray" / "export"
    with FingerprintStore(db) as store:
        store.export_parquet(export)
    t = time.perf_counter()
    single = classify_arrow(pq.read_table(export, columns=["id", "fingerprint"]), run)
    single_s = time.perf_counter() - t
    # One more logical CPU than cores: the workers hold one each, and reading needs one too.
    ray.init(
        num_cpus=(os.cpu_count() or 1) + 1,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:

        def once() -> Any:
            ds = ray.data.read_parquet(str(export)).select_columns(["id", "fingerprint"])
            ds = ds.repartition(8)  # one file: blocks, so that both workers have work
            refs = (
                ds.map_batches(
                    ArrowClassifier,
                    fn_constructor_kwargs={"discovery_dir": str(run)},
                    batch_format="pyarrow",
                    batch_size=200_000,
                    concurrency=os.cpu_count(),
                )
                .select_columns(["id", "cluster_id"])
                .to_arrow_refs()
            )
            return pa.concat_tables(ray.get(refs))

        once()  # warm: worker processes started, classifiers loaded
        t = time.perf_counter()
        got = once()
        ray_s = time.perf_counter() - t
    finally:
        ray.shutdown()
    same = got.sort_by("id")["cluster_id"].equals(single.sort_by("id")["cluster_id"])
    return {
        "rows": rows,
        "single_process_rows_per_s": rows / single_s,
        "ray_rows_per_s": rows / ray_s,
        "ray_workers": os.cpu_count(),
        "ray_over_single": single_s / ray_s,
        "results_equal": bool(same),
    }


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of points where ``a``'s label maps to ``b``'s under the best one-to-one matching
    by co-occurrence (the two fits number their clusters independently); noise is -1 in both."""
    from collections import Counter

    pairs = Counter(zip(a.tolist(), b.tolist(), strict=True))
    mapping: dict[int, int] = {-1: -1}
    used = {-1}
    for (x, y), _ in pairs.most_common():
        if x not in mapping and y not in used:
            mapping[x] = y
            used.add(y)
    return float(np.mean([mapping.get(x, -2) == y for x, y in zip(a, b, strict=True)]))


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="job,classifier,ray")
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--child", nargs="+")
    a = p.parse_args()
    if a.child:
        kind, *rest = a.child
        result = child_job(rest[0], rest[1], int(rest[2])) if kind == "job" else child_seed(*rest)
        print(json.dumps(result))
        return
    RESULTS.mkdir(exist_ok=True)
    results: dict[str, Any] = {"machine": os.uname().machine, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=os.environ.get("ATTNFAST_BENCH_TMP")) as d:
        tmp = Path(d)
        sizes = [int(n) for n in a.sizes.split(",")]
        if "job" in a.only:
            results["job"] = bench_job(tmp, sizes)
            if 100_000 in sizes:
                job = results["job"]
                job["seed_over_attnfast_100k"] = (
                    job["seed pipeline 100,000"]["seconds"] / job["attnfast 100,000"]["seconds"]
                )
        if "classifier" in a.only:
            run_dir = Path(results.get("job", {}).get("artifacts_1m", ""))
            if not run_dir.is_dir():
                raise SystemExit("the classifier bench needs the 1M run (--only job,classifier)")
            results["classifier"] = bench_classifier(run_dir)
        if "ray" in a.only:
            results["ray"] = bench_ray(tmp)
            print(f"ray: {results['ray']}", flush=True)
    name = (
        "discovery.json" if a.only == "job,classifier,ray" else f"discovery-{a.only}-{a.sizes}.json"
    )
    (RESULTS / name).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
