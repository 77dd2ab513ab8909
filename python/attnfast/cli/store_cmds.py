"""``attnfast init | ingest | query | stats | export | sidecar``: the fingerprint store."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from attnfast._time import format_us
from attnfast.cli._app import app, console, err_console, user_errors
from attnfast.exceptions import InvalidInputError, ShapeError
from attnfast.fingerprint import ZONES, unpack_fingerprints
from attnfast.messages import MessageDecoder
from attnfast.store import OPTIONAL_COLUMNS, FingerprintStore

Db = Annotated[Path, typer.Option("--db", help="The fingerprint database (SQLite).")]
INGEST_BATCH = 50_000


def _progress(bytes_: bool = False) -> Progress:
    speed = TransferSpeedColumn() if bytes_ else MofNCompleteColumn()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        speed,
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


@app.command()
def init(db: Db) -> None:
    """Create a fingerprint database (or check one; a seed database is converted)."""
    with user_errors(), FingerprintStore(db) as store:
        stats = store.stats()
    note = (
        f", converted {stats['migrated_seed_rows']} seed rows"
        if stats["migrated_seed_rows"]
        else ""
    )
    console.print(f"{db}: ready, {stats['rows']} rows{note}")


class Layout_(StrEnum):
    v1 = "v1"
    sglang = "sglang"


def _ingest_jsonl(store: FingerprintStore, path: Path, layout: str) -> tuple[int, int]:
    decoder = MessageDecoder(store, layout)
    rows = bad = 0
    with _progress(bytes_=True) as progress, path.open("rb") as f:
        task = progress.add_task(f"ingest {path.name}", total=path.stat().st_size)
        first_line = 1
        while True:
            lines = f.readlines(8 << 20)
            if not lines:
                break
            numbered = [(first_line + i, line) for i, line in enumerate(lines) if line.strip()]
            appended, errors = decoder.append([line for _, line in numbered])
            rows += appended
            for index, message in errors:
                bad += 1
                if bad <= 5:
                    where = escape(f"{path}:{numbered[index][0]}: {message}")
                    err_console.print(f"[yellow]skipped[/yellow] {where}", soft_wrap=True)
            first_line += len(lines)
            progress.advance(task, sum(len(line) for line in lines))
    return rows, bad


def _ingest_array(
    store: FingerprintStore, fps: np.ndarray, request_id: str | None, start: int, layout: str
) -> int:
    if request_id is None:
        raise InvalidInputError("--request-id is needed for .npy and packed files")
    total = 0
    with _progress() as progress:
        task = progress.add_task("ingest", total=len(fps))
        for i in range(0, len(fps), INGEST_BATCH):
            chunk = fps[i : i + INGEST_BATCH]
            steps = np.arange(start + i, start + i + len(chunk), dtype=np.int64)
            total += store.append(request_id, steps, chunk, layout=layout)
            progress.advance(task, len(chunk))
    return total


def _ingest_parquet(store: FingerprintStore, path: Path, layout: str) -> int:
    """Parquet with the export's columns (request_id, step, fingerprint, optional ones)."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    names = set(file.schema_arrow.names)
    missing = {"request_id", "step", "fingerprint"} - names
    if missing:
        raise ShapeError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    optional = [c for c in OPTIONAL_COLUMNS if c in names]
    total = 0
    with _progress() as progress:
        task = progress.add_task(f"ingest {path.name}", total=file.metadata.num_rows)
        for batch in file.iter_batches(batch_size=INGEST_BATCH):
            fps = np.asarray(batch.column("fingerprint").to_pylist(), dtype=np.float32)
            columns: dict[str, Any] = {}
            for name in optional:
                col = batch.column(name)
                if name == "created_at":
                    columns[name] = col.to_numpy(zero_copy_only=False).astype("datetime64[us]")
                else:
                    columns[name] = col.to_pylist()
            row_layout = layout
            if "schema_version" in names:
                versions = set(batch.column("schema_version").to_pylist())
                if len(versions) > 1:
                    raise InvalidInputError(f"{path}: one layout per file, found {versions}")
                row_layout = str(versions.pop())
                row_layout = {"1": "v1", "1001": "sglang"}.get(row_layout, row_layout)
            total += store.append(
                batch.column("request_id").to_pylist(),
                batch.column("step").to_numpy(),
                fps,
                layout=row_layout,
                **columns,
            )
            progress.advance(task, batch.num_rows)
    return total


@app.command()
def ingest(
    db: Db,
    inputs: Annotated[list[Path], typer.Argument(help=".jsonl, .npy, .parquet, .fp/.bin")],
    layout: Annotated[
        Layout_ | None,
        typer.Option(help="Layout of untagged vectors [default: sglang for JSONL, else v1]."),
    ] = None,
    request_id: Annotated[str | None, typer.Option(help="Request id for .npy/packed.")] = None,
    start_step: Annotated[int, typer.Option(help="First step for .npy/packed rows.")] = 1,
) -> None:
    """Load fingerprints into a database: JSONL of the SGLang explorer's ZMQ messages, (T, 20)
    .npy arrays, Parquet (as written by export), or packed 80-byte rows."""
    with user_errors(), FingerprintStore(db) as store:
        for path in inputs:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file")
            suffix = path.suffix.lower()
            bad = 0
            if suffix in (".jsonl", ".json", ".ndjson"):
                rows, bad = _ingest_jsonl(store, path, layout.value if layout else "sglang")
            elif suffix == ".npy":
                fps = np.load(path, allow_pickle=False)
                rows = _ingest_array(store, fps, request_id, start_step, (layout or "v1"))
            elif suffix in (".fp", ".bin"):
                fps = unpack_fingerprints(path.read_bytes())
                rows = _ingest_array(store, fps, request_id, start_step, (layout or "v1"))
            elif suffix == ".parquet":
                rows = _ingest_parquet(store, path, (layout or "v1"))
            else:
                raise InvalidInputError(
                    f"{path}: unknown kind; use .jsonl, .npy, .parquet, .fp or .bin"
                )
            store.flush()
            skipped = f", {bad} bad line(s) skipped" if bad else ""
            console.print(f"{path}: {rows} rows appended{skipped}")
        stats = store.stats()
    console.print(
        f"{db}: {stats['rows']} rows, {stats['requests']} requests, "
        f"{stats['duplicates_rejected']} duplicate (request_id, step) refused"
    )


class QueryFormat(StrEnum):
    table = "table"
    json = "json"
    parquet = "parquet"


@app.command()
def query(
    db: Db,
    since: Annotated[str | None, typer.Option(help="24h, 30m, 7d, or an ISO time.")] = None,
    until: Annotated[str | None, typer.Option(help="Like --since; exclusive.")] = None,
    zone: Annotated[str | None, typer.Option(help=", ".join(ZONES))] = None,
    request: Annotated[str | None, typer.Option("--request", help="One request id.")] = None,
    cluster: Annotated[int | None, typer.Option(help="Cluster id.")] = None,
    layout: Annotated[Layout_ | None, typer.Option(help="Only this layout.")] = None,
    limit: Annotated[int, typer.Option(help="Rows at most (newest requests first).")] = 20,
    format: Annotated[QueryFormat, typer.Option(help="Output format.")] = QueryFormat.table,
    out: Annotated[Path | None, typer.Option(help="File for --format parquet.")] = None,
) -> None:
    """Rows of a database, filtered. Rows of one --request come in step order."""
    with user_errors():
        if not db.exists():
            raise FileNotFoundError(f"{db}: no such database")
        if format is QueryFormat.parquet and out is None:
            raise InvalidInputError("--format parquet needs --out FILE")
        with FingerprintStore(db) as store:
            table = store.read(
                since=since,
                until=until,
                request_id=request,
                zone=zone,
                cluster_id=cluster,
                layout=None if layout is None else layout.value,
                limit=limit,
                newest_first=request is None,
            )
        if format is QueryFormat.parquet:
            import pyarrow.parquet as pq

            assert out is not None
            pq.write_table(table, out)
            console.print(f"{out}: {table.num_rows} rows")
            return
        rows = table.to_pylist()
        if format is QueryFormat.json:
            for row in rows:
                row["created_at"] = row["created_at"].isoformat()
            console.out(json.dumps(rows), highlight=False)
            return
        _query_table(rows)


def _query_table(rows: list[dict[str, Any]]) -> None:
    t = Table(title=f"{len(rows)} rows")
    for col in (
        "request_id",
        "step",
        "token_text",
        "manifold_zone",
        "conf",
        "cluster",
        "created_at",
    ):
        t.add_column(col)
    for row in rows:
        conf = row["manifold_confidence"]
        t.add_row(
            row["request_id"],
            str(row["step"]),
            repr(row["token_text"]) if row["token_text"] is not None else "",
            row["manifold_zone"] or "",
            "" if conf is None else f"{conf:.3f}",
            str(row["cluster_id"]),
            row["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(t)


@app.command()
def stats(
    db: Db,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts of a database: rows, requests, zones, duplicates refused, time span, size."""
    with user_errors():
        if not db.exists():
            raise FileNotFoundError(f"{db}: no such database")
        with FingerprintStore(db) as store:
            s = store.stats()
    s.pop("writer")
    if as_json:
        console.out(json.dumps(s), highlight=False)
        return
    t = Table(title=str(db), show_header=False)
    for key in ("rows", "requests", "duplicates_rejected", "migrated_seed_rows"):
        t.add_row(key, f"{s[key]:,}")
    for zone, n in s["zones"].items():
        t.add_row(f"zone {zone}", f"{n:,}")
    for key in ("first_created_us", "last_created_us"):
        t.add_row(key.replace("_us", ""), "" if s[key] is None else format_us(s[key]))
    t.add_row("size", f"{(s['db_bytes'] + s['wal_bytes']) / 1e6:.1f} MB")
    console.print(t)


@app.command()
def export(
    db: Db,
    out: Annotated[Path, typer.Option("--out", help="Folder; one day=YYYY-MM-DD per day.")],
    since: Annotated[str | None, typer.Option(help="24h, 7d, or an ISO time.")] = None,
    until: Annotated[str | None, typer.Option(help="Like --since; exclusive.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --out.")] = False,
) -> None:
    """Write rows as Parquet (arrow-rs), partitioned by day; pyarrow, polars and duckdb read it."""
    with user_errors():
        if not db.exists():
            raise FileNotFoundError(f"{db}: no such database")
        with FingerprintStore(db) as store, _progress() as progress:
            task = progress.add_task("export", total=store.count())
            report = store.export_parquet(
                out,
                since=since,
                until=until,
                overwrite=overwrite,
                progress=lambda n: progress.update(task, completed=n),
            )
    for f in report["files"]:
        console.print(f"{f['path']}: {f['rows']:,} rows")
    console.print(f"exported {report['rows']:,} rows to {out}")


@app.command()
def sidecar(
    db: Db,
    zmq: Annotated[
        str | None, typer.Option(help="ZMQ PULL endpoint to bind, e.g. tcp://127.0.0.1:5557.")
    ] = None,
    http: Annotated[str, typer.Option(help="HOST:PORT of the HTTP API.")] = "127.0.0.1:9000",
    discovery: Annotated[Path | None, typer.Option(help="Discovery artifacts folder.")] = None,
    zmq_layout: Annotated[
        Layout_, typer.Option(help="Layout of ZMQ vectors without a tag.")
    ] = Layout_.sglang,
    synchronous: Annotated[str, typer.Option(help="normal or full.")] = "normal",
    max_body_mb: Annotated[float, typer.Option(help="Largest HTTP body accepted.")] = 64,
) -> None:
    """Stream fingerprints from an inference server into a database (ZMQ and HTTP)."""
    from attnfast.sidecar import serve

    with user_errors():
        host, _, port = http.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidInputError(f"--http must be HOST:PORT, got {http!r}")
        err_console.print(
            f"attnfast sidecar: db {db}, http://{host}:{port}" + (f", zmq {zmq}" if zmq else "")
        )
        serve(
            db,
            zmq_endpoint=zmq,
            host=host,
            port=int(port),
            discovery_dir=discovery,
            zmq_layout=zmq_layout.value,
            synchronous=synchronous,
            max_body_bytes=int(max_body_mb * (1 << 20)),
        )
