"""``attnfast report``: what the store and the discovery runs say, as tables, JSON and PNGs.

Zone distribution over time (the seed's ``zone_distribution_hourly``), cluster growth
(``cluster_growth``), the clusters of the newest run (sizes, zones, labels), the newest run's
record and stage times; plots of the zone shares over time and of the 2-D embedding coloured
by cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attnfast.discovery import artifacts
from attnfast.exceptions import InvalidInputError
from attnfast.store import FingerprintStore

#: PNG files a report writes.
PLOTS = ("zones.png", "embedding.png")
#: Points drawn in the embedding plot, at most (a uniform subsample beyond).
MAX_POINTS = 200_000


def build_report(db: str | Path, discovery_dir: str | Path | None = None) -> dict[str, Any]:
    """The report's content as plain data (what ``--format json`` prints)."""
    from attnfast.discovery.job import existing_database

    db = existing_database(db)
    with FingerprintStore(db) as store:
        zones = store.sql("SELECT * FROM zone_distribution_hourly ORDER BY hour")
        growth = store.sql("SELECT * FROM cluster_growth ORDER BY day, cluster_id")
        clusters = store.sql(
            "SELECT cluster_id, run_id, label, dominant_zone, zone_confidence, size, "
            "persistence, description FROM clusters WHERE cluster_id >= 0 ORDER BY size DESC"
        )
        runs = store.sql(
            "SELECT * FROM discovery_runs ORDER BY started_at DESC, rowid DESC LIMIT 1"
        )
        rows = store.count()
    report: dict[str, Any] = {
        "db": str(db),
        "rows": rows,
        "zone_distribution_hourly": zones,
        "cluster_growth": growth,
        "clusters": clusters,
        "latest_run": runs[0] if runs else None,
    }
    if discovery_dir is not None:
        run = artifacts.resolve_run(discovery_dir)
        manifest = artifacts.read_manifest(run)  # sizes and checksums: a damaged run says so
        report["discovery"] = {
            "run_dir": str(run),
            "run_id": manifest["run_id"],
            "mode": manifest["mode"],
            "counts": manifest["counts"],
            "stages": manifest["stages"],
        }
    return report


def write_plots(report: dict[str, Any], out: Path, overwrite: bool = False) -> list[Path]:
    """``zones.png`` (zone shares per hour) and, with a discovery folder, ``embedding.png``
    (the run's 2-D embedding coloured by cluster) in ``out``."""
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--png {out} is a file; name a folder")
    targets = [out / PLOTS[0]] + ([out / PLOTS[1]] if "discovery" in report else [])
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise InvalidInputError(f"{existing[0]} exists; pass --overwrite to replace it")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    hours = sorted({z["hour"] for z in report["zone_distribution_hourly"]})
    names = ["syntax_floor", "semantic_bridge", "structure_ripple", "unknown"]
    counts = np.zeros((len(names), len(hours)))
    for z in report["zone_distribution_hourly"]:
        counts[names.index(z["manifold_zone"]), hours.index(z["hour"])] = z["count"]
    shares = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(9, 4))
    if hours:
        # Stacked bars, not an area: one hour of data (a new store) must still show.
        bottom = np.zeros(len(hours))
        for i, name in enumerate(names):
            ax.bar(range(len(hours)), shares[i], bottom=bottom, width=0.9, label=name)
            bottom += shares[i]
        step = max(1, len(hours) // 8)
        ax.set_xticks(
            range(0, len(hours), step), [hours[i][5:16] for i in range(0, len(hours), step)]
        )
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of fingerprints")
    ax.set_title("Zones per hour")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(targets[0], dpi=110)
    plt.close(fig)
    if "discovery" in report:
        import pyarrow.parquet as pq

        e = pq.read_table(
            Path(report["discovery"]["run_dir"]) / "embeddings.parquet",
            columns=["x", "y", "cluster_id"],
        )
        x, y = e["x"].to_numpy(), e["y"].to_numpy()
        c = e["cluster_id"].to_numpy()
        if len(x) > MAX_POINTS:
            pick = np.random.default_rng(0).choice(len(x), MAX_POINTS, replace=False)
            x, y, c = x[pick], y[pick], c[pick]
        fig, ax = plt.subplots(figsize=(7, 7))
        noise = c < 0
        ax.scatter(x[noise], y[noise], s=1, c="lightgrey", label="noise")
        ax.scatter(x[~noise], y[~noise], s=1, c=c[~noise], cmap="tab20")
        # Each cluster's id at its median, to match the colours with the report's table.
        for cid in np.unique(c[~noise]).tolist():
            ax.text(
                float(np.median(x[c == cid])),
                float(np.median(y[c == cid])),
                str(cid),
                fontsize=9,
                weight="bold",
                ha="center",
                va="center",
            )
        shown = "noise in grey" if noise.any() else "no noise"
        ax.set_title(f"Run {report['discovery']['run_id']}: 2-D embedding by cluster ({shown})")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(targets[1], dpi=110)
        plt.close(fig)
    return targets
