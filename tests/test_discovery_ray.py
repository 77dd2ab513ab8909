"""Classification past one machine: Ray Data over an attnfast export of a million rows, the
classifier loaded once per worker from the artifact folder, against the single process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from attnfast import FingerprintStore
from attnfast.discovery import ArrowClassifier, classify_arrow
from attnfast.synthetic import planted
from discovery_data import Runs

ROWS = 1_000_000


def test_ray_data_classifies_an_export_as_one_process_does(
    discovery_runs: Runs, tmp_path: Path
) -> None:
    import ray

    fps, _ = planted(ROWS, clusters=8, noise=0.03, seed=5)  # the run's centres
    db, export = tmp_path / "big.db", tmp_path / "export"
    with FingerprintStore(db) as store:
        store.append([f"r{i // 1000}" for i in range(ROWS)], np.arange(ROWS) % 1000, fps)
        store.flush()
        assert store.export_parquet(export)["rows"] == ROWS
    run = discovery_runs.sampled.run_dir
    single = classify_arrow(pq.read_table(export, columns=["id", "fingerprint"]), run)
    single = single.sort_by("id")

    # Three logical CPUs on two cores: the two workers hold one each, and reading needs one.
    ray.init(
        num_cpus=3,
        include_dashboard=False,
        object_store_memory=1 << 30,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        ds = ray.data.read_parquet(str(export)).select_columns(["id", "fingerprint"])
        ds = ds.repartition(8)  # one file: blocks, so that both workers have work
        classified = ds.map_batches(
            ArrowClassifier,
            fn_constructor_kwargs={"discovery_dir": str(run)},
            batch_format="pyarrow",
            batch_size=100_000,
            concurrency=2,
        )
        refs = classified.select_columns(
            ["id", "cluster_id", "cluster_probability", "x", "zone"]
        ).to_arrow_refs()
        got = pa.concat_tables(ray.get(refs)).sort_by("id")
    finally:
        ray.shutdown()
    assert got.num_rows == ROWS
    for column in ("id", "cluster_id", "cluster_probability", "x", "zone"):
        assert got[column].equals(single[column]), column
