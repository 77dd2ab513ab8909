"""The capture commands end to end, in a subprocess, on the built-in model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from attnfast import CaptureFile, FingerprintStore


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("attnfast")), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_capture_heatmap_replay_convert(builtin_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = run(
        "capture",
        "--out",
        "run.attn",
        "--mode",
        "full",
        "--prompt",
        "First, the data. Then (a [b",
        "--max-new-tokens",
        "24",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "captured 24 steps" in r.stdout
    f = CaptureFile(tmp_path / "run.attn")
    assert len(f) == 24
    assert f.sequences[0]["request_id"] == "run"
    for by in ("position", "sentence"):
        r = run("heatmap", "run.attn", "--out", f"{by}.png", "--by", by, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / f"{by}.png").read_bytes()[:4] == b"\x89PNG"
    r = run("replay-eviction", "run.attn", "--budget", "16", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert [x["policy"] for x in results] == ["streaming", "h2o", "snapkv", "tova"]
    assert all(len(x["kept_share"]) == 24 and 0 < x["min_kept"] <= 1 for x in results)
    assert (
        run("convert", "run.attn", "--to", "json", "--out", "run.json", cwd=tmp_path).returncode
        == 0
    )
    assert (
        run("convert", "run.json", "--to", "attn", "--out", "back.attn", cwd=tmp_path).returncode
        == 0
    )
    np.testing.assert_array_equal(
        CaptureFile(tmp_path / "back.attn").attention(23), f.attention(23)
    )
    r = run(
        "capture",
        "--out",
        "fp.db",
        "--mode",
        "topk",
        "--prompt",
        "abc",
        "--max-new-tokens",
        "5",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    with FingerprintStore(tmp_path / "fp.db") as store:
        assert store.count() == 5
    r = run("capture", "--out", "x.attn", "--prompt", "abc", cwd=tmp_path)
    assert r.returncode == 2
    assert "writes fingerprints to a database" in r.stderr
    r = run("capture", "--out", "x.db", "--model", "nowhere", "--prompt", "abc", cwd=tmp_path)
    assert r.returncode == 2
    assert "nowhere is not a directory" in r.stderr
    r = run(
        "prune-sim",
        "--prompt",
        "copy: a b | a b",
        "--drop",
        "0",
        "--max-new-tokens",
        "8",
        "--json",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["agreement"] == 1.0
