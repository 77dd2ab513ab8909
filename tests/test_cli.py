"""The installed ``attnfast`` command, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import attnfast
from attention_cases import causal_attention

ATTNFAST = str(Path(sys.executable).with_name("attnfast"))


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # The demo trains the built-in model once per cache, and compiles umap-learn (~1 min).
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [ATTNFAST, *args], capture_output=True, text=True, check=check, env=env, timeout=600
    )


def test_help_lists_commands():
    out = run("--help").stdout
    for command in (
        "version",
        "demo",
        "fingerprint",
        "zones",
        "init",
        "ingest",
        "query",
        "stats",
        "export",
        "sidecar",
        "discover",
        "report",
    ):
        assert command in out


def test_version_json():
    info = json.loads(run("version", "--json").stdout)
    assert info["version"] == attnfast.__version__
    assert info["layouts"] == {"v1": 1, "sglang": 1001}
    assert info["simd"] in ("baseline", "avx2+fma", "avx512")


def test_demo_fingerprints_every_pattern():
    out = run("demo").stdout
    for pattern in ("local", "periodic", "long-range", "mid-range", "diffuse"):
        assert pattern in out
    for zone in ("syntax_floor", "structure_ripple", "semantic_bridge"):
        assert zone in out
    assert "round trip exact: True" in out
    assert "Stored them in a fingerprint database (80 rows, 5 requests)" in out
    # Discovery on the captured and synthetic fingerprints, then an online classification.
    assert "Attention programs of run" in out
    assert "4,064 fingerprints" in out
    assert "classified online: {'zone':" in out


def test_fingerprint_then_zones(tmp_path, rng):
    attn = causal_attention(rng, 5, 3, 2, 64)
    np.save(tmp_path / "attn.npy", attn)
    run("fingerprint", str(tmp_path / "attn.npy"), "--out", str(tmp_path / "fps.fp"))
    packed = (tmp_path / "fps.fp").read_bytes()
    np.testing.assert_array_equal(
        attnfast.unpack_fingerprints(packed), attnfast.compute_fingerprints(attn)
    )
    report = json.loads(run("zones", str(tmp_path / "fps.fp"), "--format", "json").stdout)
    zones, _ = attnfast.zone_of(attnfast.compute_fingerprints(attn))
    assert [r["zone"] for r in report["rows"]] == zones.tolist()
    assert sum(report["counts"].values()) == 5
    table = run("fingerprint", str(tmp_path / "attn.npy")).stdout
    assert "5 fingerprints" in table


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path):
    attn = np.full((1, 2, 2, 8), 0.125, dtype=np.float32)
    attn[0, 1, 0, 3] = np.nan
    np.save(tmp_path / "bad.npy", attn)
    out = run("fingerprint", str(tmp_path / "bad.npy"), check=False)
    assert out.returncode == 2
    assert "attention step 0, layer 1, head 0, key 3 is NaN" in out.stderr
    assert "Traceback" not in out.stderr
    missing = run("zones", str(tmp_path / "nope.fp"), check=False)
    assert missing.returncode == 2
    assert "nope.fp" in missing.stderr
    (tmp_path / "short.fp").write_bytes(b"\0" * 81)
    short = run("zones", str(tmp_path / "short.fp"), check=False)
    assert short.returncode == 2
    assert "81 bytes" in short.stderr
