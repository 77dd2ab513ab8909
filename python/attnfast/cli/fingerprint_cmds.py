"""``attnfast fingerprint`` and ``attnfast zones``: the fingerprint maths on files."""

from __future__ import annotations

import json
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

import attnfast
from attnfast._files import PACKED_SUFFIXES, load_fingerprints, load_npy
from attnfast.cli._app import Overwrite, app, console, new_output, removed_on_failure, user_errors
from attnfast.exceptions import InvalidInputError


def _save_fingerprints(fps: np.ndarray, path: Path) -> None:
    if path.suffix in PACKED_SUFFIXES:
        path.write_bytes(attnfast.pack_fingerprints(fps))
    elif path.suffix == ".npy":
        np.save(path, fps, allow_pickle=False)
    else:
        raise InvalidInputError(f"{path}: write .npy or packed rows ({', '.join(PACKED_SUFFIXES)})")


def _show(fps: np.ndarray, limit: int) -> None:
    zones, conf = attnfast.zone_of(fps)
    table = Table(
        title=f"{len(fps)} fingerprints" + (f" (first {limit})" if len(fps) > limit else "")
    )
    for col in ("row", "local", "mid", "long", "entropy", "zone", "conf"):
        table.add_column(col, justify="left" if col == "zone" else "right")
    for i in range(min(limit, len(fps))):
        f = fps[i]
        table.add_row(
            str(i),
            f"{f[0]:.3f}",
            f"{f[1]:.3f}",
            f"{f[2]:.3f}",
            f"{f[3]:.3f}",
            str(zones[i]),
            f"{conf[i]:.2f}",
        )
    console.print(table)


@app.command()
def fingerprint(
    attn_path: Annotated[
        Path, typer.Argument(help="Attention as .npy: (L, H, N) or (T, L, H, N).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write .npy or packed .fp/.bin.")
    ] = None,
    query_positions: Annotated[
        str | None, typer.Option(help="Comma-separated query position of each step.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows to show when printing.", min=0)] = 20,
    overwrite: Overwrite = False,
) -> None:
    """Compute v1 fingerprints of attention stored in a .npy file."""
    with user_errors():
        if out is not None:
            if out.suffix not in (".npy", *PACKED_SUFFIXES):
                raise InvalidInputError(f"--out {out}: write .npy or packed rows (.fp, .bin)")
            new_output(out, overwrite)
        attn = load_npy(attn_path, mmap=True)
        try:
            q = [int(x) for x in query_positions.split(",")] if query_positions else None
        except ValueError:
            raise InvalidInputError(
                f"--query-positions must be comma-separated integers, got {query_positions!r}"
            ) from None
        fps = attnfast.compute_fingerprints(attn, q)
        if out is not None:
            with removed_on_failure(out):
                _save_fingerprints(fps, out)
            console.print(f"wrote {len(fps)} fingerprints to {out}")
        else:
            _show(fps, limit)


class ZonesFormat(StrEnum):
    table = "table"
    json = "json"


@app.command()
def zones(
    path: Annotated[Path, typer.Argument(help="Fingerprints: .npy (T, 20) or packed .fp/.bin.")],
    output_format: Annotated[ZonesFormat, typer.Option("--format")] = ZonesFormat.table,
    limit: Annotated[int, typer.Option(help="Rows to show in the table.")] = 20,
) -> None:
    """Zone of each fingerprint, by the seed discovery job's rules, with counts."""
    with user_errors():
        fps = load_fingerprints(path)
        names, conf = attnfast.zone_of(fps)
        counts = Counter(names.tolist())
        if output_format is ZonesFormat.json:
            rows = [
                {"zone": str(z), "confidence": float(c)} for z, c in zip(names, conf, strict=True)
            ]
            console.print_json(json.dumps({"counts": counts, "rows": rows}))
        else:
            _show(fps, limit)
            console.print(", ".join(f"{z}: {n}" for z, n in counts.most_common()))
