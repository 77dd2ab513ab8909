"""``attnfast discover | report``: the discovery job and what the runs say."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from attnfast.cli._app import (
    app,
    console,
    err_console,
    removed_on_failure,
    user_errors,
)
from attnfast.cli.store_cmds import Db, LayoutName


@app.command()
def discover(
    db: Db,
    output: Annotated[Path, typer.Option("--output", help="Folder of run folders (created).")],
    hours: Annotated[
        float | None, typer.Option(help="Window: the last HOURS (default 24).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Window start (ISO time, unix seconds, or '24h').")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Window end, exclusive (default now).")] = None,
    min_cluster_size: Annotated[int, typer.Option(help="HDBSCAN min_cluster_size.")] = 50,
    min_samples: Annotated[int, typer.Option(help="HDBSCAN min_samples.")] = 10,
    umap_neighbors: Annotated[int, typer.Option(help="UMAP n_neighbors.")] = 15,
    umap_min_dist: Annotated[float, typer.Option(help="UMAP min_dist.")] = 0.1,
    pca_components: Annotated[
        int, typer.Option(help="PCA components (capped at 20 and at rows - 1).")
    ] = 50,
    prototypes: Annotated[int, typer.Option(help="Prototypes per cluster.")] = 5,
    sample_size: Annotated[
        int, typer.Option(help="Above this many fingerprints, fit on a sample of this size.")
    ] = 100_000,
    seed: Annotated[int, typer.Option(help="Random seed (sample, PCA, UMAP).")] = 42,
    layout: Annotated[
        LayoutName, typer.Option(help="Fingerprint layout to cluster (never mixed).")
    ] = LayoutName.v1,
    keep: Annotated[int | None, typer.Option(help="Keep only the newest N run folders.")] = None,
    write_joblib: Annotated[
        bool, typer.Option("--write-joblib", help="Also write the seed's pickles (joblib).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Cluster the fingerprints of a window into attention programs: scaler, PCA, UMAP,
    HDBSCAN (the seed's job); artifacts under OUTPUT/<run_id>/ and OUTPUT/latest; the
    store's discovery_runs, clusters and prototypes tables; cluster ids on the rows."""
    from attnfast.discovery import run_discovery

    with user_errors(), removed_on_failure(output):
        result = run_discovery(
            db,
            output,
            hours=hours,
            since=since,
            until=until,
            min_cluster_size=min_cluster_size,
            min_samples=min_samples,
            umap_neighbors=umap_neighbors,
            umap_min_dist=umap_min_dist,
            pca_components=pca_components,
            prototypes=prototypes,
            sample_size=sample_size,
            seed=seed,
            layout=layout.value,
            keep=keep,
            write_joblib=write_joblib,
            progress=err_console.is_terminal,
        )
    if as_json:
        m = result.manifest
        print(
            json.dumps(
                {
                    "run_id": result.run_id,
                    "run_dir": str(result.run_dir),
                    "mode": m["mode"],
                    "counts": m["counts"],
                    "stages": m["stages"],
                }
            )
        )
        return
    fitted = f"fit on a sample of {result.fit_count:,}" if result.sampled else "full fit"
    console.print(
        f"run {result.run_id}: {result.fingerprint_count:,} fingerprints of "
        f"{result.request_count:,} requests, {result.cluster_count} clusters, "
        f"{result.noise_count:,} noise ({100 * result.clustered_share:.1f}% clustered; {fitted})"
    )
    table = Table("cluster", "size", "zone", "label")
    import pyarrow.parquet as pq

    clusters = pq.read_table(result.run_dir / "clusters.parquet").to_pylist()
    for c in sorted(clusters, key=lambda c: -c["size"])[:20]:
        table.add_row(
            str(c["cluster_id"]),
            f"{c['size']:,}",
            f"{c['dominant_zone']} ({100 * c['zone_confidence']:.0f}%)",
            escape(c["label"]),
        )
    console.print(table)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.stages.items())
    console.print(f"stages: {stages}")
    console.print(f"artifacts: {result.run_dir}")


class ReportFormat(StrEnum):
    table = "table"
    json = "json"


@app.command()
def report(
    db: Db,
    discovery: Annotated[
        Path | None, typer.Option(help="Discovery output folder (its latest run).")
    ] = None,
    format: Annotated[ReportFormat, typer.Option(help="table or json.")] = ReportFormat.table,
    png: Annotated[Path | None, typer.Option(help="Folder for zones.png, embedding.png.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the PNGs in --png if they exist.")
    ] = False,
) -> None:
    """Zones over time, cluster growth, clusters with their labels, the latest run's stages;
    optionally PNG plots of zone shares and of the embedding by cluster."""
    from attnfast.discovery.report import build_report, write_plots

    with user_errors():
        content = build_report(db, discovery)
        written: list[Path] = []
        if png is not None:
            with removed_on_failure(png):
                written = write_plots(content, png, overwrite)
    if format is ReportFormat.json:
        print(json.dumps(content, default=str))
        return
    console.print(f"{db}: {content['rows']:,} fingerprints")
    zones = Table("hour", "zone", "count", "avg confidence", title="Zones per hour (newest 12)")
    for z in content["zone_distribution_hourly"][-12:]:
        conf = z["avg_confidence"]
        zones.add_row(
            z["hour"], z["manifold_zone"], f"{z['count']:,}", "" if conf is None else f"{conf:.2f}"
        )
    console.print(zones)
    growth = Table("day", "cluster", "count", title="Cluster growth (newest 12)")
    for g in content["cluster_growth"][-12:]:
        growth.add_row(g["day"], str(g["cluster_id"]), f"{g['count']:,}")
    console.print(growth)
    clusters = Table("cluster", "size", "zone", "label", title="Clusters of the newest run")
    for c in content["clusters"][:20]:
        clusters.add_row(
            str(c["cluster_id"]),
            f"{c['size']:,}",
            f"{c['dominant_zone']} ({100 * (c['zone_confidence'] or 0):.0f}%)",
            escape(c["label"] or ""),
        )
    console.print(clusters)
    run = content["latest_run"]
    if run is not None:
        console.print(
            f"latest run {run['run_id']}: {run['status']}"
            + (f" ({run['error_message']})" if run["error_message"] else "")
        )
    if "discovery" in content:
        if run is not None and run["run_id"] != content["discovery"]["run_id"]:
            console.print(
                f"note: --discovery shows run {content['discovery']['run_id']}; the database's "
                f"newest run is {run['run_id']} (its tables above are that run's)"
            )
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in content["discovery"]["stages"].items())
        console.print(f"stages of {content['discovery']['run_id']}: {stages}")
    for p in written:
        console.print(f"wrote {p}")
