"""``attnfast init | ingest | query | stats | export | sidecar``: the fingerprint store."""

from __future__ import annotations

import contextlib
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

from attnfast._files import PACKED_SUFFIXES, existing_file, load_npy, load_packed
from attnfast._time import format_us
from attnfast.cli._app import (
    Overwrite,
    app,
    console,
    err_console,
    new_output,
    removed_on_failure,
    user_errors,
    warn,
)
from attnfast.exceptions import (
    AttnfastError,
    DecodeError,
    InvalidInputError,
    MissingFileError,
    ShapeError,
)
from attnfast.fingerprint import FINGERPRINT_DIM, ZONES
from attnfast.layout import Layout
from attnfast.messages import MessageDecoder
from attnfast.store import OPTIONAL_COLUMNS, FingerprintStore, Written

Db = Annotated[Path, typer.Option("--db", help="The fingerprint database (SQLite).")]
INGEST_BATCH = 50_000
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
INGESTED = (*JSONL_SUFFIXES, ".npy", *PACKED_SUFFIXES, ".parquet")


def _progress(bytes_: bool = False) -> Progress:
    speed = TransferSpeedColumn() if bytes_ else MofNCompleteColumn()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        speed,
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,  # a log gets the summary lines, not a bar
    )


def _existing_db(db: Path) -> Path:
    """The database of a command that reads one: it must exist (nothing is created)."""
    if not db.exists():
        raise MissingFileError(f"{db}: no such database")
    return db


def _opened(store: FingerprintStore) -> None:
    """Says what opening a database did to it, when it did something."""
    o = store.opened
    if o["migrated_rows"]:
        warn(f"{store.path}: converted from the seed's schema ({o['migrated_rows']:,} rows)")
    if o["upgraded_from"] is not None:
        warn(f"{store.path}: upgraded from attnfast store schema {o['upgraded_from']}")
    if o["quarantined_rows"]:
        warn(
            f"{store.path}: {o['quarantined_rows']:,} row(s) that no reader could read were "
            "moved to the table af_quarantine, with the reason for each"
        )


@app.command()
def init(db: Db) -> None:
    """Create a fingerprint database (or check one; a seed database is converted).

    An SQLite database of another program gets attnfast's tables only through this command."""
    with user_errors(), removed_on_failure(db), FingerprintStore(db, init=True) as store:
        _opened(store)
        stats = store.stats()
    console.print(f"{db}: ready, {stats['rows']:,} rows")


class LayoutName(StrEnum):
    v1 = "v1"
    sglang = "sglang"


def _inputs(paths: list[Path]) -> list[Path]:
    """The files to ingest: the paths given, and the files of a folder given (an export
    folder: every file of a known kind under it, in name order)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in INGESTED and not p.name.startswith(".")
            )
            if not found:
                raise MissingFileError(f"{path}: the folder holds no file to ingest")
            files.extend(found)
        else:
            existing_file(path)
            if path.suffix.lower() not in INGESTED:
                raise DecodeError(f"{path}: unknown kind; use .jsonl, .npy, .parquet, .fp or .bin")
            files.append(path)
    return files


def _ingest_jsonl(
    store: FingerprintStore, path: Path, layout: str
) -> tuple[Written, int, list[str]]:
    """What the file became, how many lines were refused, and the first few refusals."""
    decoder = MessageDecoder(store, layout)
    tickets: list[Any] = []
    bad, skipped = 0, []
    with _progress(bytes_=True) as progress, path.open("rb") as f:
        task = progress.add_task(f"ingest {path.name}", total=path.stat().st_size)
        first_line = 1
        while True:
            lines = f.readlines(8 << 20)
            if not lines:
                break
            numbered = [(first_line + i, line) for i, line in enumerate(lines) if line.strip()]
            submitted, errors = decoder.submit([line for _, line in numbered])
            tickets.extend(submitted)
            for index, message in errors:
                bad += 1
                if bad <= 5:
                    skipped.append(f"{path}:{numbered[index][0]}: {message}")
            first_line += len(lines)
            progress.advance(task, sum(len(line) for line in lines))
    if bad > 5:
        skipped.append(f"{bad - 5} more bad line(s) of {path}")
    return Written.wait(tickets), bad, skipped


def _ingest_array(
    store: FingerprintStore, fps: np.ndarray, request_id: str, start: int, layout: str
) -> Written:
    if fps.ndim != 2 or fps.shape[1] != FINGERPRINT_DIM:
        raise ShapeError(f"fingerprints must be (T, {FINGERPRINT_DIM}), got shape {fps.shape}")
    tickets = []
    with _progress() as progress:
        task = progress.add_task("ingest", total=len(fps))
        for i in range(0, len(fps), INGEST_BATCH):
            chunk = fps[i : i + INGEST_BATCH]
            steps = np.arange(start + i, start + i + len(chunk), dtype=np.int64)
            tickets.append(store._submit(request_id, steps, chunk, layout=layout))
            progress.advance(task, len(chunk))
    return Written.wait(tickets)


def _parquet_fingerprints(path: Path, column: Any) -> np.ndarray:
    """The fingerprint column (a fixed or variable list of 20 floats per row) as (T, 20)."""
    import pyarrow as pa

    if column.null_count:
        raise DecodeError(f"{path}: the fingerprint column has empty rows")
    kind = column.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)) or not (
        pa.types.is_floating(kind.value_type)
    ):
        raise DecodeError(f"{path}: the fingerprint column must hold lists of floats, not {kind}")
    flat = np.asarray(column.flatten(), dtype=np.float32)
    if len(flat) != len(column) * FINGERPRINT_DIM:
        raise DecodeError(f"{path}: the fingerprint column must hold 20 floats per row")
    return flat.reshape(-1, FINGERPRINT_DIM)


def _ingest_parquet(store: FingerprintStore, path: Path, layout: str | None) -> Written:
    """Parquet with the export's columns (request_id, step, fingerprint, optional ones). Each
    row's layout is its ``schema_version``; rows of different layouts are stored apart."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several kinds for a file that is not Parquet
        raise DecodeError(f"{path} is not a readable Parquet file ({e})") from None
    names = set(file.schema_arrow.names)
    missing = {"request_id", "step", "fingerprint"} - names
    if missing:
        raise DecodeError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    optional = [c for c in OPTIONAL_COLUMNS if c in names]
    tickets = []
    with _progress() as progress:
        task = progress.add_task(f"ingest {path.name}", total=file.metadata.num_rows)
        for batch in file.iter_batches(batch_size=INGEST_BATCH):
            fps = _parquet_fingerprints(path, batch.column("fingerprint"))
            columns: dict[str, Any] = {}
            for name in optional:
                col = batch.column(name)
                if name == "created_at":
                    columns[name] = col.to_numpy(zero_copy_only=False).astype("datetime64[us]")
                elif name == "invalid":
                    columns[name] = col.to_numpy(zero_copy_only=False).astype(np.bool_)
                else:
                    columns[name] = col.to_pylist()
            ids = batch.column("request_id").to_pylist()
            steps = batch.column("step").to_numpy()
            # A row's own tag wins; --layout (else v1) is for rows without one.
            default = Layout.of(layout or "v1").code
            if "schema_version" in names:
                tags = pc.fill_null(batch.column("schema_version"), default)
                codes = tags.to_numpy(zero_copy_only=False).astype(np.int64)
            else:
                codes = np.full(len(ids), default)
            for code in np.unique(codes):
                rows = np.flatnonzero(codes == code)
                part = {k: _take(v, rows) for k, v in columns.items()}
                tickets.append(
                    store._submit(
                        [ids[i] for i in rows], steps[rows], fps[rows], layout=int(code), **part
                    )
                )
            progress.advance(task, batch.num_rows)
    return Written.wait(tickets)


def _take(values: Any, rows: np.ndarray) -> Any:
    if isinstance(values, np.ndarray):
        return values[rows]
    return [values[i] for i in rows]


@app.command()
def ingest(
    db: Db,
    inputs: Annotated[
        list[Path], typer.Argument(help=".jsonl, .npy, .parquet, .fp/.bin files, or folders.")
    ],
    layout: Annotated[
        LayoutName | None,
        typer.Option(help="Layout of untagged vectors (default: sglang for JSONL, else v1)."),
    ] = None,
    request_id: Annotated[str | None, typer.Option(help="Request id for .npy/packed.")] = None,
    start_step: Annotated[int, typer.Option(help="First step for .npy/packed rows.", min=0)] = 1,
) -> None:
    """Load fingerprints into a database: JSONL, .npy, Parquet (an export folder), packed rows.

    JSONL holds the SGLang explorer's ZMQ messages; .npy a (T, 20) array; Parquet the columns
    export writes (give the export folder to read all of it back); .fp/.bin packed 80-byte
    rows. Reports rows stored, rows refused as duplicates and lines refused as invalid, apart.
    """
    with user_errors():
        files = _inputs(inputs)
        arrays = [p for p in files if p.suffix.lower() in (".npy", *PACKED_SUFFIXES)]
        if arrays and request_id is None:
            raise InvalidInputError(f"--request-id is needed for {arrays[0]} (.npy and packed)")
        existed = db.exists()
        with removed_on_failure(db), FingerprintStore(db) as store:
            _opened(store)
            total, bad_total, done = Written(), 0, []
            for path in files:
                try:
                    written, bad, skipped = _ingest_file(
                        store, path, layout, request_id, start_step
                    )
                except AttnfastError as e:
                    raise _failed_file(store, path, e, existed) from None
                total, bad_total = total + written, bad_total + bad
                done.append((path, written, bad, skipped))
            if bad_total and not (total.stored or total.duplicates):
                # Nothing usable in the input: a failure (status 2; a new database is removed).
                first = next(s for *_, skipped in done for s in skipped)
                raise InvalidInputError(
                    f"all {bad_total:,} line(s) were refused as invalid, nothing was stored; "
                    f"the first: {first}"
                )
            stats = store.stats()
    for path, written, bad, skipped in done:
        for line in skipped:
            err_console.print(f"[yellow]skipped[/yellow] {escape(line)}", soft_wrap=True)
        refused = f", {bad:,} line(s) refused as invalid" if bad else ""
        console.print(f"{path}: {written.summary()}{refused}", soft_wrap=True)
    if len(files) > 1:
        refused = f", {bad_total:,} line(s) refused as invalid" if bad_total else ""
        console.print(f"{len(files)} files: {total.summary()}{refused}", soft_wrap=True)
    console.print(f"{db}: {stats['rows']:,} rows, {stats['requests']:,} requests")


def _ingest_file(
    store: FingerprintStore,
    path: Path,
    layout: str | None,
    request_id: str | None,
    start_step: int,
) -> tuple[Written, int, list[str]]:
    """What one file became, how many of its lines were refused as invalid, and the first few
    refusals (only JSONL refuses lines: other files are whole or fail)."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _ingest_jsonl(store, path, layout or "sglang")
    if suffix == ".parquet":
        return _ingest_parquet(store, path, layout), 0, []
    assert request_id is not None
    fps = load_npy(path) if suffix == ".npy" else load_packed(path)
    return _ingest_array(store, fps, request_id, start_step, layout or "v1"), 0, []


def _failed_file(
    store: FingerprintStore, path: Path, error: AttnfastError, kept: bool
) -> AttnfastError:
    """``error`` naming the file and, when the database is ``kept`` (it existed before the
    command), how many rows the command stored before it failed: earlier files, and batches
    of this one that were committed before the bad one."""
    message = str(error)
    if not message.startswith(str(path)):
        message = f"{path}: {message}"
    if kept:
        with contextlib.suppress(AttnfastError):  # the stats below say what was stored
            store.flush()
        stored = store.stats()["writer"]["rows_written"]
        if stored:
            message += f" (this command stored {stored:,} rows before it)"
    return type(error)(message)


class QueryFormat(StrEnum):
    table = "table"
    json = "json"
    parquet = "parquet"


TABLE_ROWS = 20


@app.command()
def query(
    db: Db,
    since: Annotated[
        str | None, typer.Option(help="24h, 30m, 7d, an ISO time or unix seconds.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Like --since; exclusive.")] = None,
    zone: Annotated[str | None, typer.Option(help=", ".join(ZONES))] = None,
    request: Annotated[str | None, typer.Option("--request", help="One request id.")] = None,
    cluster: Annotated[int | None, typer.Option(help="Cluster id.")] = None,
    layout: Annotated[LayoutName | None, typer.Option(help="Only this layout.")] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help=f"Rows at most, newest requests first; 0 for all (default: {TABLE_ROWS} for "
            "the table, all for json and parquet).",
            min=0,
        ),
    ] = None,
    format: Annotated[QueryFormat, typer.Option(help="Output format.")] = QueryFormat.table,
    out: Annotated[Path | None, typer.Option(help="File for json or parquet output.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Rows of a database, filtered; rows of one --request come in step order.

    json and parquet give every matching row unless --limit says otherwise; the table says how
    many it left out. Parquet output has the export's schema: the files concatenate."""
    with user_errors():
        _existing_db(db)
        if format is QueryFormat.parquet and out is None:
            raise InvalidInputError("--format parquet needs --out FILE")
        if format is QueryFormat.table and out is not None:
            raise InvalidInputError("--out is for --format json or parquet")
        if out is not None:
            new_output(out, overwrite)
        if limit is None:
            limit = TABLE_ROWS if format is QueryFormat.table else 0
        filters: dict[str, Any] = dict(
            since=since,
            until=until,
            request_id=request,
            zone=zone,
            cluster_id=cluster,
            layout=None if layout is None else layout.value,
        )
        with FingerprintStore(db) as store:
            table = store.read(**filters, limit=limit or None, newest_first=request is None)
            matching = store.count(**filters) if limit else table.num_rows
        if out is not None:
            with removed_on_failure(out):
                _write_rows(table, out, format)
            console.print(f"{out}: {table.num_rows:,} rows" + _left_out(table.num_rows, matching))
        elif format is QueryFormat.json:
            console.out(json.dumps(_json_rows(table)), highlight=False)
            if matching > table.num_rows:
                warn(
                    f"{matching - table.num_rows:,} more matching rows left out (--limit 0 for all)"
                )
        else:
            _query_table(table.to_pylist(), matching)


def _left_out(shown: int, matching: int) -> str:
    return (
        f" ({matching - shown:,} more matching rows left out by --limit)"
        if matching > shown
        else ""
    )


def _json_rows(table: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    for row in rows:
        row["created_at"] = row["created_at"].isoformat()
    return rows


def _write_rows(table: Any, out: Path, format: QueryFormat) -> None:
    if format is QueryFormat.parquet:
        import pyarrow.parquet as pq

        pq.write_table(table, out)
    else:
        out.write_text(json.dumps(_json_rows(table)))


def _query_table(rows: list[dict[str, Any]], matching: int) -> None:
    shown = f"{len(rows)} rows" if matching <= len(rows) else f"{len(rows)} of {matching:,} rows"
    t = Table(title=shown, caption="--limit 0 shows them all" if matching > len(rows) else None)
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
            (row["manifold_zone"] or "") + (" (invalid)" if row["invalid"] else ""),
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
    """Counts of a database: rows, requests, layouts, zones, invalid and duplicate rows, size."""
    with user_errors():
        _existing_db(db)
        with FingerprintStore(db) as store:
            _opened(store)
            s = store.stats()
    s.pop("writer")
    if as_json:
        console.out(json.dumps(s), highlight=False)
        return
    t = Table(title=str(db), show_header=False)
    t.add_row("rows", f"{s['rows']:,}")
    for layout, n in s["rows_by_layout"].items():
        t.add_row(f"  layout {layout}", f"{n:,}")
    t.add_row("requests", f"{s['requests']:,}")
    for zone, n in s["zones"].items():
        t.add_row(f"zone {zone}", f"{n:,}")
    for key in (
        "unzoned_rows",
        "invalid_rows",
        "duplicates_rejected",
        "quarantined_rows",
        "migrated_seed_rows",
    ):
        t.add_row(key, f"{s[key]:,}")
    for key in ("first_created_us", "last_created_us"):
        t.add_row(key.replace("_us", ""), "" if s[key] is None else format_us(s[key]))
    t.add_row("size", f"{(s['db_bytes'] + s['wal_bytes']) / 1e6:.1f} MB")
    console.print(t)


@app.command()
def export(
    db: Db,
    out: Annotated[Path, typer.Option("--out", help="Folder; one day=YYYY-MM-DD per day.")],
    since: Annotated[str | None, typer.Option(help="24h, 7d, an ISO time or unix seconds.")] = None,
    until: Annotated[str | None, typer.Option(help="Like --since; exclusive.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --out.")] = False,
) -> None:
    """Write rows as Parquet (arrow-rs), partitioned by day.

    pyarrow, polars and duckdb read it, and `attnfast ingest` reads it back."""
    with user_errors():
        _existing_db(db)
        with (
            removed_on_failure(out),
            FingerprintStore(db) as store,
            _progress() as progress,
        ):
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


class Synchronous(StrEnum):
    normal = "normal"
    full = "full"


@app.command()
def sidecar(
    db: Db,
    zmq: Annotated[
        str | None, typer.Option(help="ZMQ PULL endpoint to bind, e.g. tcp://127.0.0.1:5557.")
    ] = None,
    http: Annotated[str, typer.Option(help="HOST:PORT of the HTTP API.")] = "127.0.0.1:9000",
    discovery: Annotated[
        Path | None,
        typer.Option(
            help="Discovery output folder: classify every stored row with its latest run."
        ),
    ] = None,
    reload_seconds: Annotated[
        float, typer.Option(help="How often to look for a new discovery run (0: never).", min=0)
    ] = 300,
    zmq_layout: Annotated[
        LayoutName, typer.Option(help="Layout of ZMQ vectors without a tag.")
    ] = LayoutName.sglang,
    synchronous: Annotated[
        Synchronous, typer.Option(help="full also survives power loss.")
    ] = Synchronous.normal,
    max_body_mb: Annotated[
        float, typer.Option(help="Largest HTTP body accepted, in MiB.", min=0.001)
    ] = 64,
) -> None:
    """Stream fingerprints from an inference server into a database (ZMQ and HTTP).

    Prints where it listens; SIGTERM or Ctrl-C flushes and says what was stored."""
    from attnfast.servers.sidecar import serve

    with user_errors():
        host, _, port = http.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise InvalidInputError(
                f"--http must be HOST:PORT with a port up to 65535, got {http!r}"
            )
        serve(
            db,
            zmq_endpoint=zmq,
            host=host.strip("[]"),
            port=int(port),
            discovery_dir=discovery,
            reload_interval_seconds=reload_seconds,
            zmq_layout=zmq_layout.value,
            synchronous=synchronous.value,
            max_body_bytes=int(max_body_mb * (1 << 20)),
            say=lambda line: err_console.print(escape(line), soft_wrap=True),
        )
