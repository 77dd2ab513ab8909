"""Every command of ``attnfast`` with bad input: one line on stderr, exit status 2, no
traceback, no file left behind that was not there before, and every file that was there
unchanged. And damaged capture files, named by file and chunk."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnfast import CaptureWriter, FingerprintStore
from attnfast.cli import app
from attnfast.synthetic import fingerprints

ATTNFAST = str(Path(sys.executable).with_name("attnfast"))


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("ATTNFAST_DEBUG", None)
    return subprocess.run(
        [ATTNFAST, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def capture_file(path: Path, steps: int = 6, chunk_bytes: int = 4 << 20, every_n: int = 1) -> None:
    tokens = [{"token_id": i, "text": "a.", "position": i, "sentence_id": i} for i in range(4)]
    meta = {"model": "m", "every_n": every_n, "sequences": [{"prompt_tokens": tokens}]}
    with CaptureWriter(path, meta, chunk_bytes=chunk_bytes) as w:
        for t in range(0, steps, every_n):
            row = np.full((1, 1, 4 + t), 1 / (4 + t), np.float32)
            w.write_step(sequence=0, step=t, token_id=t, position=4 + t, timestamp_ms=0,
                         text="x", attention=row)  # fmt: skip


def inputs(d: Path) -> None:
    """The files the cases below refer to, made before each case runs."""
    np.save(d / "fps.npy", fingerprints(4))
    np.save(d / "attn.npy", np.full((2, 3, 8), 1 / 8, np.float32))
    np.save(d / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "garbage.npy").write_bytes(b"\x93NUMPY garbage that is not an array")
    (d / "flat.npy").write_bytes(b"")
    np.save(d / "wide.npy", np.zeros((3, 7), np.float32))
    np.save(d / "not_fingerprints.npy", np.full((3, 20), 0.5, np.float32))  # masses sum to 1.5
    (d / "rows.fp").write_bytes(b"\0" * 81)
    (d / "garbage.attn").write_bytes(b"ATTNCAP\0" + b"\xff" * 40)
    (d / "garbage.json").write_text("{not json")
    (d / "garbage.parquet").write_bytes(b"PAR1 not really")
    (d / "prompts.txt").write_text('{"no_prompt": 1}\n')
    (d / "messages.jsonl").write_text("")
    (d / "refused.jsonl").write_text('{"request_id": "r", "vector": [1, 2]}\n')
    (d / "empty").mkdir()
    capture_file(d / "ok.attn")
    capture_file(d / "every2.attn", every_n=2)
    other = sqlite3.connect(d / "other.sqlite")
    other.execute("CREATE TABLE users (name TEXT)")
    other.commit()
    other.close()
    (d / "notadb.db").write_bytes(b"definitely not sqlite" * 50)
    with FingerprintStore(d / "fp.db") as store:
        store.append("r", [1, 2, 3, 4], fingerprints(4))


BAD = [
    ["version", "--bogus"],
    ["demo", "--bogus"],
    ["fingerprint", "missing.npy"],
    ["fingerprint", "pickled.npy"],
    ["fingerprint", "garbage.npy"],
    ["fingerprint", "flat.npy"],
    ["fingerprint", "wide.npy"],
    ["fingerprint", "attn.npy", "-o", "out.txt"],
    ["fingerprint", "attn.npy", "--query-positions", "a,b"],
    ["fingerprint", "attn.npy", "--limit", "-1"],
    ["fingerprint", "attn.npy", "-o", "fps.npy"],  # exists: --overwrite replaces it
    ["fingerprint", "attn.npy", "-o", "nodir/fps.npy"],
    ["zones", "rows.fp"],
    ["zones", "fps.txt"],
    ["zones", "pickled.npy"],
    ["zones", "fps.npy", "--format", "xml"],
    ["init", "--db", "missing/fp.db"],
    ["init", "--db", "empty"],
    ["init", "--db", "notadb.db"],
    ["ingest", "--db", "new.db", "missing.jsonl"],
    ["ingest", "--db", "new.db", "refused.jsonl"],
    ["ingest", "--db", "new.db", "ok.attn"],
    ["ingest", "--db", "new.db", "fps.npy"],
    ["ingest", "--db", "new.db", "garbage.parquet"],
    ["ingest", "--db", "new.db", "pickled.npy", "--request-id", "r"],
    ["ingest", "--db", "new.db", "wide.npy", "--request-id", "r"],
    ["ingest", "--db", "new.db", "fps.npy", "not_fingerprints.npy", "--request-id", "r"],
    ["ingest", "--db", "new.db", "rows.fp", "--request-id", "r"],
    ["ingest", "--db", "new.db", "empty"],
    ["ingest", "--db", "other.sqlite", "fps.npy", "--request-id", "r"],
    ["ingest", "--db", "new.db", "fps.npy", "--request-id", "r", "--start-step", "-1"],
    ["query", "--db", "missing.db"],
    ["query", "--db", "notadb.db"],
    ["query", "--db", "other.sqlite"],
    ["query", "--db", "fp.db", "--format", "json", "--out", "fps.npy"],
    ["query", "--db", "fp.db", "--format", "parquet", "--out", "nodir/q.parquet"],
    ["stats", "--db", "missing.db"],
    ["stats", "--db", "notadb.db"],
    ["export", "--db", "missing.db", "--out", "out"],
    ["export", "--db", "fp.db", "--out", "out", "--since", "1h", "--until", "2h"],
    ["discover", "--db", "missing.db", "--output", "out"],
    ["discover", "--db", "notadb.db", "--output", "out"],
    ["discover", "--db", "fp.db", "--output", "fps.npy"],
    ["discover", "--db", "fp.db", "--output", "out", "--hours", "2", "--since", "1h"],
    ["discover", "--db", "fp.db", "--output", "out", "--min-cluster-size", "1"],
    ["discover", "--db", "fp.db", "--output", "out", "--keep", "0"],
    ["discover", "--db", "fp.db", "--output", "out", "--layout", "v2"],
    ["report", "--db", "missing.db"],
    ["report", "--db", "fp.db", "--discovery", "empty"],
    ["report", "--db", "fp.db", "--png", "fps.npy"],
    ["report", "--db", "fp.db", "--format", "xml"],
    ["sidecar", "--db", "new.db", "--max-body-mb", "0"],
    ["sidecar", "--db", "new.db", "--reload-seconds", "-1"],
    ["sidecar", "--db", "new.db", "--http", "nowhere"],
    ["capture", "--out", "new.db"],
    ["capture", "--out", "new.txt", "--prompt", "hi", "--mode", "full"],
    ["capture", "--out", "new.attn", "--prompt", "hi"],
    ["capture", "--out", "ok.attn", "--prompt", "hi", "--mode", "full"],
    ["capture", "--out", "new.db", "--prompts", "missing.txt"],
    ["capture", "--out", "new.db", "--prompts", "prompts.txt"],
    ["capture", "--out", "new.db", "--prompt", "hi", "--layers", "a,b"],
    ["capture", "--out", "new.db", "--prompt", "hi", "--model", "no/such/dir"],
    ["capture", "--out", "new.db", "--prompt", "hi", "--model", "empty"],  # no config.json
    ["capture", "--out", "new.db", "--prompt", "hi", "--max-new-tokens", "0"],
    ["capture", "--out", "new.db", "--prompt", "hi", "--layers", "9"],
    ["heatmap", "missing.attn", "--out", "h.png"],
    ["heatmap", "garbage.attn", "--out", "h.png"],
    ["heatmap", "ok.attn", "--out", "h.txt"],
    ["heatmap", "ok.attn", "--out", "h.png", "--by", "word"],
    ["heatmap", "ok.attn", "--out", "h.png", "--sequence", "3"],
    ["heatmap", "ok.attn", "--out", "fps.npy.png"],
    ["replay-eviction", "ok.attn", "--budget", "0"],
    ["replay-eviction", "ok.attn", "--budget", "4", "--policy", "lru"],
    ["replay-eviction", "garbage.attn", "--budget", "4"],
    ["replay-eviction", "ok.attn", "--budget", "4", "--sequence", "2"],
    ["replay-eviction", "every2.attn", "--budget", "4"],
    ["prune-sim", "--drop", "1.5"],
    ["prune-sim", "--drop", "-0.1"],
    ["prune-sim", "--prompt", ""],
    ["prune-sim", "--model", "no/such/dir"],
    ["convert", "missing.attn", "--to", "json", "--out", "c.json"],
    ["convert", "ok.attn", "--to", "xml", "--out", "c.json"],
    ["convert", "garbage.json", "--to", "attn", "--out", "c.attn"],
    ["convert", "garbage.attn", "--to", "json", "--out", "c.json"],
    ["convert", "ok.attn", "--to", "json", "--out", "ok.attn"],
    ["convert", "ok.attn", "--to", "json", "--out", "garbage.json"],
    ["convert", "ok.attn", "--to", "json", "--out", "c.json", "--sequence", "4"],
]


def test_every_command_has_a_bad_input_case() -> None:
    commands = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    covered = {case[0] for case in BAD}
    assert commands <= covered, commands - covered


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a) for a in BAD])
def test_bad_input_is_one_line_and_status_2(tmp_path: Path, args: list[str]) -> None:
    inputs(tmp_path)
    if "fps.npy.png" in args:
        (tmp_path / "fps.npy.png").write_bytes(b"an image drawn earlier")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    contents = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    done = run(args, tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, set(after) - set(before)
    changed = [p.name for p, data in contents.items() if p.read_bytes() != data]
    assert not changed, changed


def test_damaged_capture_files_are_named_by_chunk(tmp_path: Path) -> None:
    path = tmp_path / "c.attn"
    capture_file(path, steps=40, chunk_bytes=200)  # many small chunks
    whole = path.read_bytes()
    # A step chunk's payload damaged: the steps before it read, the command that needs it
    # fails naming the file and the chunk.
    damaged = bytearray(whole)
    damaged[len(whole) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    done = run(["replay-eviction", str(path), "--budget", "8"], tmp_path)
    assert done.returncode == 2
    assert "c.attn: chunk" in done.stderr
    assert "is damaged" in done.stderr
    assert "Traceback" not in done.stderr
    # Cut short (the writer was killed): scanned, with a warning; every whole step reads.
    path.write_bytes(whole[: len(whole) - 300])
    done = run(["replay-eviction", str(path), "--budget", "8", "--policy", "tova"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "has no index" in done.stderr
    # A damaged metadata header is an error, not empty fields.
    header = bytearray(whole)
    header[16 + 32 + 2] ^= 0xFF  # inside chunk 0's payload
    path.write_bytes(bytes(header))
    done = run(["heatmap", str(path), "--out", str(tmp_path / "h.png")], tmp_path)
    assert done.returncode == 2
    assert "metadata header (chunk 0, byte 16) is damaged" in done.stderr
    assert not (tmp_path / "h.png").exists()


def test_unreadable_arrays_say_what_they_are(tmp_path: Path) -> None:
    inputs(tmp_path)
    (tmp_path / "text.npy").write_text("hello")
    for name, said in [
        ("pickled.npy", "holds an object array (a pickle): refused"),
        ("text.npy", "is not a .npy file"),
        ("garbage.npy", "is not a readable .npy array"),
    ]:
        done = run(["fingerprint", name], tmp_path)
        assert done.returncode == 2
        assert said in done.stderr, done.stderr
