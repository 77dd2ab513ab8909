"""The .attn capture file from Python: round trips, the seed's JSON both ways, sizes, and
damage that names the chunk while the rest stays readable."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import attnfast
from attnfast import CaptureFile, CaptureFileError, CaptureWriter
from attnfast.models import ByteTokenizer

PROMPT = (
    "Please analyze the following data. First, consider the primary factors: X, Y, and Z. "
    "By the way, it's a nice day today. Finally, summarize your findings."
)


@pytest.fixture(scope="module")
def captured(builtin_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:  # type: ignore[no-untyped-def, type-arg]
    """A full capture of the built-in model: the file and the in-memory records."""
    path = tmp_path_factory.mktemp("cap") / "run.attn"
    ids = torch.tensor([ByteTokenizer().encode(PROMPT)])
    with attnfast.capture(builtin_model, "full", sink=str(path), request_id="run"):
        builtin_model.generate(ids, 48)
    with attnfast.capture(builtin_model, "full") as mem:
        builtin_model.generate(ids, 48)
    return path, mem.records


def test_round_trip_matches_memory_records(captured) -> None:  # type: ignore[no-untyped-def]
    path, records = captured
    f = CaptureFile(path)
    assert f.indexed
    assert f.problems == []
    assert f.verify() == []
    assert len(f) == 48
    assert f.meta["model"] == "TinyCausalLM"
    assert f.meta["mode"] == "full"
    assert f.sequences[0]["request_id"] == "run"
    prompt = f.prompt_tokens(0)
    assert "".join(t["text"] for t in prompt[1:]) == PROMPT
    assert max(t["sentence_id"] for t in prompt) == 3  # four sentences: ids 0..3
    for r in records[::7]:
        i = f.find(r.step)
        info = f.step_info(i)
        assert (info["token_id"], info["position"], info["text"]) == (
            r.token_id,
            r.position,
            r.token_text,
        )
        a = f.attention(i)
        # float16 storage: relative error below 2^-11 of each value, plus subnormal slack
        np.testing.assert_allclose(a, r.attention, rtol=1e-3, atol=1e-7)


def test_json_export_import_and_sizes(captured, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = captured
    f = CaptureFile(path)
    js = f.to_json(tmp_path / "run.json")
    data = json.loads(js.read_text())
    assert set(data) == {"metadata", "prompt_tokens", "generated_tokens"}
    assert set(data["prompt_tokens"][0]) == {
        "token_id",
        "text",
        "position",
        "turn_id",
        "message_role",
        "sentence_id",
    }
    token = data["generated_tokens"][5]
    assert token["step"] == 5
    assert token["attention"]["shape"] == [4, 4, token["position"]]
    assert token["attention"]["context_length"] == token["position"]
    values = np.asarray(token["attention"]["data"], dtype=np.float32).reshape(
        token["attention"]["shape"]
    )
    np.testing.assert_array_equal(
        values, f.attention(f.find(5))
    )  # JSON holds the stored values exactly
    # Sizes: the binary file against the JSON and the gzipped JSON of the same capture.
    gz = tmp_path / "run.json.gz"
    gz.write_bytes(gzip.compress(js.read_bytes(), 6))
    binary = path.stat().st_size
    assert js.stat().st_size >= 10 * binary
    assert gz.stat().st_size >= 3 * binary
    back = CaptureFile.from_json(gz, tmp_path / "back.attn")
    assert len(back) == len(f)
    np.testing.assert_array_equal(back.attention(back.find(47)), f.attention(f.find(47)))
    assert back.prompt_tokens(0) == f.prompt_tokens(0)


def write_small(path: Path, steps: int = 30) -> None:
    with CaptureWriter(path, {"model": "m"}, chunk_bytes=2048) as w:
        for s in range(steps):
            a = np.random.default_rng(s).random((2, 3, 20 + s), dtype=np.float32)
            w.write_step(
                sequence=0,
                step=s,
                token_id=s,
                position=20 + s,
                timestamp_ms=s,
                text=str(s),
                attention=a,
            )


def test_truncated_file_keeps_intact_steps(tmp_path: Path) -> None:
    path = tmp_path / "t.attn"
    write_small(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    f = CaptureFile(path)
    assert not f.indexed
    assert 0 < len(f) < 30
    _chunk, offset, message = f.problems[0]
    assert "truncated" in message
    assert offset > 0
    for i in range(len(f)):
        s = int(f.steps["step"][i])
        want = np.random.default_rng(s).random((2, 3, 20 + s), dtype=np.float32)
        np.testing.assert_allclose(f.attention(i), want, rtol=1e-3)


def test_flipped_byte_names_the_chunk(tmp_path: Path) -> None:
    path = tmp_path / "t.attn"
    write_small(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x55
    path.write_bytes(bytes(data))
    f = CaptureFile(path)
    bad = f.verify()
    assert len(bad) == 1
    failures = 0
    for i in range(len(f)):
        try:
            f.attention(i)
        except CaptureFileError as e:
            failures += 1
            assert f"chunk {bad[0][0]} (byte {bad[0][1]})" in str(e)  # noqa: PT017
            assert "checksum" in str(e)  # noqa: PT017
    assert 0 < failures < 30


def test_bad_files_and_inputs(tmp_path: Path) -> None:
    junk = tmp_path / "junk.attn"
    junk.write_text('{"metadata": {}}')
    with pytest.raises(CaptureFileError, match="not an attnfast capture file"):
        CaptureFile(junk)
    with pytest.raises(CaptureFileError, match="is not a seed JSON capture"):
        CaptureFile.from_json(junk, tmp_path / "out.attn")
    with pytest.raises(FileNotFoundError):
        CaptureFile(tmp_path / "missing.attn")
    w = CaptureWriter(tmp_path / "w.attn")
    header = {"sequence": 0, "step": 0, "token_id": 0, "position": 1, "timestamp_ms": 0, "text": ""}
    nan = np.array([[[0.5, np.nan]]], dtype=np.float32)
    with pytest.raises(attnfast.AttentionValueError, match="index 1 is not a finite non-negative"):
        w.write_step(**header, attention=nan)
    with pytest.raises(attnfast.ShapeError, match=r"must be \(layers, heads, keys\)"):
        w.write_step(**header, attention=np.ones(3, dtype=np.float32))
    assert w.steps == 0
    w.close()
    assert len(CaptureFile(tmp_path / "w.attn")) == 0
