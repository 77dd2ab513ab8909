"""Run folders: writing them (atomically, with a manifest of every file's size and checksum),
finding the one in use (``latest``), checking them before use, and pruning old ones.

The format is specified in docs/discovery-artifacts.md; ``rust/core/src/discovery/artifact.rs``
reads ``model.json`` and ``sample.parquet``. Nothing here unpickles anything: the seed's
``.joblib`` files are written only on request and read only with ``trust_pickle=True``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from attnfast.exceptions import ArtifactError, InvalidInputError, MissingFileError

#: The manifest's ``format`` and the version of the folder layout this attnfast writes/reads.
FORMAT = "attnfast-discovery"
FORMAT_VERSION = 1
MODEL_FORMAT = "attnfast-discovery-model"

#: Run ids are UTC times, ``YYYY-MM-DDTHH-MM-SS`` (with ``-N`` when two runs share a second).
RUN_ID = re.compile(r"^\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d(-\d+)?$")

#: Files every run folder holds (besides manifest.json).
REQUIRED = (
    "model.json",
    "sample.parquet",
    "embeddings.parquet",
    "clusters.parquet",
    "prototypes.parquet",
    "request_embeddings.parquet",
    "condensed_tree.parquet",
)
JOBLIB = ("clusterer.joblib", "embedding_models.joblib")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "manifest.json"
    }


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False, allow_nan=False) + "\n")


def publish(staging: Path, output: Path, run_id: str) -> Path:
    """Moves a finished staging folder to ``output/run_id`` and points ``latest`` at it; both
    steps are renames, so a reader sees the old run or the new one, never half of one."""
    final = output / run_id
    os.replace(staging, final)
    link = output / f".latest-{run_id}.tmp"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(run_id)  # relative: the folder can move as a whole
    os.replace(link, output / "latest")
    return final


def run_folders(output: Path) -> list[Path]:
    """Finished run folders under ``output``, oldest first."""
    if not output.is_dir():
        return []
    return sorted(
        p
        for p in output.iterdir()
        if p.is_dir()
        and not p.is_symlink()
        and RUN_ID.match(p.name)
        and (p / "manifest.json").is_file()
    )


def prune(output: Path, keep: int) -> list[Path]:
    """Removes all but the newest ``keep`` run folders (never the one ``latest`` names)."""
    if keep < 1:
        raise InvalidInputError(f"--keep must be at least 1, got {keep}")
    current = (output / "latest").resolve() if (output / "latest").is_symlink() else None
    removed = []
    for p in run_folders(output)[:-keep]:
        if current is not None and p.resolve() == current:
            continue
        shutil.rmtree(p)
        removed.append(p)
    return removed


def resolve_run(discovery_dir: str | Path) -> Path:
    """The run folder to use: ``discovery_dir`` itself if it is one, else what its ``latest``
    names, else its newest run folder."""
    d = Path(discovery_dir)
    if not d.exists():
        raise MissingFileError(f"{d}: no such discovery folder")
    if not d.is_dir():
        raise InvalidInputError(f"{d} is a file, not a discovery folder")
    if (d / "manifest.json").is_file():
        return d
    latest = d / "latest"
    if latest.is_symlink() or latest.exists():
        target = latest.resolve()
        if not target.is_dir():
            raise ArtifactError(f"{latest} points to {target}, which does not exist")
        if not (target / "manifest.json").is_file():
            raise ArtifactError(
                f"{latest} points to {target}, which has no manifest.json (not a finished run)"
            )
        return target
    runs = run_folders(d)
    if not runs:
        raise MissingFileError(f"{d}: no discovery run in it (run `attnfast discover` first)")
    return runs[-1]


def read_manifest(run: Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of ``run``, checked: its format and version, and (``verify``) that every
    file it lists is there with its size and checksum."""
    path = run / "manifest.json"
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file (is {run} a discovery run folder?)")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: not a readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(
            f"{path}: not an attnfast discovery manifest (format is "
            f"{manifest.get('format') if isinstance(manifest, dict) else None!r})"
        )
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {version!r}, written by attnfast "
            f"{manifest.get('attnfast_version', '?')}; this attnfast reads version "
            f"{FORMAT_VERSION}: run discovery again"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{path}: has no file list")
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise ArtifactError(f"{path}: does not list {', '.join(missing)}")
    if verify:
        for name, entry in files.items():
            f = run / name
            if not f.is_file():
                raise ArtifactError(f"{f}: listed in the manifest but missing")
            size = f.stat().st_size
            if size != entry.get("bytes"):
                raise ArtifactError(
                    f"{f}: {size} bytes, the manifest says {entry.get('bytes')} "
                    "(truncated or replaced)"
                )
            if sha256(f) != entry.get("sha256"):
                raise ArtifactError(f"{f}: checksum differs from the manifest (damaged)")
    return manifest


def load_joblib(run: Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """The seed's pickles of a run written with ``--write-joblib``: ``{"clusterer": HDBSCAN,
    "embedding_models": {"scaler", "pca", "umap"}}``. Unpickling runs whatever code the files
    name, so it happens only with ``trust_pickle=True``, for files you made yourself."""
    if not trust_pickle:
        raise InvalidInputError(
            f"{run}: the .joblib files are pickles, and loading a pickle runs the code it "
            "names; pass trust_pickle=True only for run folders you made yourself"
        )
    read_manifest(run)  # the checksums at least say the files are the ones the run wrote
    missing = [name for name in JOBLIB if not (run / name).is_file()]
    if missing:
        raise MissingFileError(f"{run}: no {', '.join(missing)} (run with --write-joblib)")
    import joblib

    return {name.removesuffix(".joblib"): joblib.load(run / name) for name in JOBLIB}
