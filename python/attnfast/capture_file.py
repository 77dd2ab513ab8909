"""Full-attention capture files: attnfast's binary ``.attn`` format (spec:
``docs/capture-format.md``) and the seed's JSON format (seed 003), both ways.

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "c.attn")
>>> w = CaptureWriter(path, {"model": "demo"})
>>> w.write_step(sequence=0, step=0, token_id=7, position=3, timestamp_ms=0, text="a",
...              attention=np.full((2, 2, 3), 1 / 3, dtype=np.float32))
>>> w.close() > 0
True
>>> f = CaptureFile(path)
>>> len(f), f.meta["model"], f.attention(0).shape
(1, 'demo', (2, 2, 3))
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from attnfast import _core
from attnfast.exceptions import CaptureFileError, DtypeError, MissingFileError

FORMAT_NAME = "attnfast-capture-1"
STEP_COLUMNS = (
    "sequence",
    "step",
    "token_id",
    "position",
    "timestamp_ms",
    "layers",
    "heads",
    "context_len",
    "text",
)
# Metadata keys of a capture that the seed's JSON carries in its "metadata" object, besides
# its own (timestamp, model, description, config): how the capture was made.
CAPTURE_KEYS = ("mode", "layers", "heads", "every_n")


class CaptureWriter:
    """Writes a ``.attn`` file step by step: the Rust core encodes float16 byte planes and
    compresses full chunks with zstd on its own thread, so memory stays at a few chunks.
    ``close()`` writes the index; a file never closed is still readable up to its last
    whole chunk."""

    def __init__(
        self,
        path: str | Path,
        meta: dict[str, Any] | None = None,
        *,
        chunk_bytes: int = 4 << 20,
        level: int = 3,
    ) -> None:
        self.path = Path(path)
        head = {"format": FORMAT_NAME, "created_ms": int(time.time() * 1000), **(meta or {})}
        self._w = _core.CaptureWriter(str(self.path), json.dumps(head), chunk_bytes, level)

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Merges keys into the file's metadata (a later value of a key wins)."""
        self._w.write_meta(json.dumps(meta, ensure_ascii=False))

    def write_step(
        self,
        *,
        sequence: int,
        step: int,
        token_id: int,
        position: int,
        timestamp_ms: int,
        text: str,
        attention: Any,
        prompt: bool = False,
    ) -> None:
        """Appends one step: ``attention`` is ``(layers, heads, keys)`` float32 or float16.
        With ``prompt``, a prompt row instead (the row of one prompt position, captured with
        ``prefill=True``; ``step`` is that position)."""
        a = np.asarray(attention)
        if a.dtype.kind != "f":
            raise DtypeError(f"attention must hold floats, got dtype {a.dtype}")
        if a.dtype not in (np.float32, np.float16):
            a = a.astype(np.float32)
        self._w.write_step(
            sequence, step, token_id, position, timestamp_ms, text, np.ascontiguousarray(a), prompt
        )

    @property
    def steps(self) -> int:
        return int(self._w.steps)

    @property
    def prompt_rows(self) -> int:
        return int(self._w.prompt_rows)

    def close(self) -> int:
        """Seals the file; returns its size in bytes (0 if it was already closed)."""
        return int(self._w.close())

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CaptureFile:
    """A ``.attn`` file opened for reading: ``len(f)`` steps in file order, ``f.steps`` (the
    step table as numpy columns), ``f.attention(i)`` (float32 ``(layers, heads, keys)``),
    ``f.find(step, sequence)``, ``f.meta`` and ``f.problems`` (chunks found damaged while
    opening; their steps are missing, every other step reads normally). Prompt rows
    (``prefill=True``): ``f.prompt_steps`` and ``f.prompt_attention(i)``. A file whose
    metadata header is damaged raises :class:`CaptureFileError`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise CaptureFileError(f"{self.path} is a folder, not a capture file")
        self._r = _core.CaptureReader(str(self.path))
        self.meta: dict[str, Any] = json.loads(self._r.meta_json())
        cols = self._r.steps()
        self.steps: dict[str, Any] = dict(zip(STEP_COLUMNS, cols, strict=True))
        self.prompt_steps: dict[str, Any] = dict(
            zip(STEP_COLUMNS, self._r.steps(prompt=True), strict=True)
        )
        self._where = {
            (int(s), int(t)): i
            for i, (s, t) in enumerate(zip(self.steps["sequence"], self.steps["step"], strict=True))
        }

    @property
    def problems(self) -> list[tuple[int, int, str]]:
        """``(chunk, byte offset, message)`` of each chunk found damaged while opening."""
        return list(self._r.problems())

    @property
    def indexed(self) -> bool:
        """False when the file had no index (never closed, or cut short) and was scanned."""
        return bool(self._r.indexed)

    def verify(self) -> list[tuple[int, int, str]]:
        """Reads every chunk and returns every problem (empty for a whole file)."""
        return list(self._r.verify())

    def __len__(self) -> int:
        return len(self._r)

    @property
    def sequences(self) -> list[dict[str, Any]]:
        seqs: list[dict[str, Any]] = self.meta.get("sequences", [])
        return seqs

    def attention(self, i: int) -> NDArray[np.float32]:
        """Step ``i`` (file order) as float32 ``(layers, heads, keys)``."""
        if not 0 <= i < len(self):
            raise IndexError(f"step index {i} is out of range (0..{len(self) - 1})")
        out: NDArray[np.float32] = self._r.read(i)
        return out

    def prompt_attention(self, i: int) -> NDArray[np.float32]:
        """Prompt row ``i`` (file order) as float32 ``(layers, heads, keys)``."""
        count = len(self.prompt_steps["step"])
        if not 0 <= i < count:
            raise IndexError(f"prompt row index {i} is out of range (the capture has {count})")
        out: NDArray[np.float32] = self._r.read(i, prompt=True)
        return out

    def prompt_indices(self, sequence: int = 0) -> list[int]:
        """File indices of one sequence's prompt rows, in position order."""
        rows = self.prompt_steps
        return sorted(
            (i for i, s in enumerate(rows["sequence"].tolist()) if s == sequence),
            key=lambda i: int(rows["position"][i]),
        )

    def find(self, step: int, sequence: int = 0) -> int:
        """The file index of generation ``step`` of ``sequence``."""
        try:
            return self._where[(sequence, step)]
        except KeyError:
            raise KeyError(f"the capture has no step {step} of sequence {sequence}") from None

    def indices(self, sequence: int = 0) -> list[int]:
        """File indices of one sequence's steps, in step order."""
        return sorted(
            (i for (s, _), i in self._where.items() if s == sequence),
            key=lambda i: int(self.steps["step"][i]),
        )

    def step_info(self, i: int, *, prompt: bool = False) -> dict[str, Any]:
        table = self.prompt_steps if prompt else self.steps
        return {c: (table[c][i] if c == "text" else int(table[c][i])) for c in STEP_COLUMNS}

    def prompt_tokens(self, sequence: int = 0) -> list[dict[str, Any]]:
        seqs = self.sequences
        return list(seqs[sequence]["prompt_tokens"]) if sequence < len(seqs) else []

    def iter_steps(self, sequence: int = 0) -> Iterator[tuple[dict[str, Any], NDArray[np.float32]]]:
        for i in self.indices(sequence):
            yield self.step_info(i), self.attention(i)

    # --- the seed's JSON ------------------------------------------------------------------

    def to_json(self, path: str | Path, *, sequence: int = 0) -> Path:
        """Writes one sequence in the seed's JSON format (gzip when ``path`` ends in ``.gz``),
        streaming step by step. The capture's own metadata (mode, layers, heads, every_n,
        the request id) rides in ``metadata``, and prompt rows in ``prompt_attention``
        (attnfast's additions, which the seed's readers ignore), so that
        :meth:`from_json` gives the capture back whole."""
        path = Path(path)
        opener: Any = gzip.open if path.suffix == ".gz" else open
        seqs = self.sequences
        meta = {
            "timestamp": self.meta.get("created_ms", 0),
            "model": self.meta.get("model", ""),
            "description": self.meta.get("description", ""),
            "config": self.meta.get("config", {}),
            **{k: self.meta[k] for k in CAPTURE_KEYS if k in self.meta},
        }
        if sequence < len(seqs) and "request_id" in seqs[sequence]:
            meta["request_id"] = seqs[sequence]["request_id"]
        with opener(path, "wt", encoding="utf-8") as out:
            out.write('{"metadata": ' + json.dumps(meta) + ', "prompt_tokens": ')
            out.write(json.dumps(self.prompt_tokens(sequence), ensure_ascii=False))
            out.write(', "generated_tokens": [')
            _write_records(out, self.iter_steps(sequence))
            out.write("]")
            prompt = [
                (self.step_info(i, prompt=True), self.prompt_attention(i))
                for i in self.prompt_indices(sequence)
            ]
            if prompt:
                out.write(', "prompt_attention": [')
                _write_records(out, iter(prompt))
                out.write("]")
            out.write("}")
        return path

    @classmethod
    def from_json(cls, json_path: str | Path, out_path: str | Path) -> CaptureFile:
        """Converts a seed JSON capture (or ``.json.gz``) into a ``.attn`` file."""
        json_path = Path(json_path)
        if not json_path.is_file():
            raise MissingFileError(f"no such capture file: {json_path}")
        opener: Any = gzip.open if json_path.suffix == ".gz" else open
        try:
            with opener(json_path, "rt", encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as e:
            raise CaptureFileError(f"{json_path} is not a JSON capture: {e}") from e
        if not isinstance(data, dict) or "generated_tokens" not in data:
            raise CaptureFileError(
                f"{json_path} is not a seed JSON capture: it has no 'generated_tokens'"
            )
        meta = data.get("metadata", {})
        if not isinstance(meta, dict):
            raise CaptureFileError(f"{json_path}: its 'metadata' is not an object")
        head = {
            "model": meta.get("model", ""),
            "description": meta.get("description", ""),
            "config": meta.get("config", {}),
            "created_ms": meta.get("timestamp", 0),
            **{k: meta[k] for k in CAPTURE_KEYS if k in meta},
            "sequences": [
                {
                    "request_id": meta.get("request_id", json_path.stem),
                    "prompt_tokens": data.get("prompt_tokens", []),
                }
            ],
        }
        with CaptureWriter(out_path, head) as w:
            for prompt, key in ((False, "generated_tokens"), (True, "prompt_attention")):
                for n, token in enumerate(data.get(key, [])):
                    try:
                        att = token["attention"]
                        values = np.asarray(att["data"], dtype=np.float32).reshape(att["shape"])
                        w.write_step(
                            sequence=0,
                            step=int(token.get("step", n)),
                            token_id=int(token.get("token_id", -1)),
                            position=int(token.get("position", 0)),
                            timestamp_ms=int(token.get("timestamp", 0)),
                            text=str(token.get("text", "")),
                            attention=values,
                            prompt=prompt,
                        )
                    except (KeyError, TypeError, ValueError) as e:
                        raise CaptureFileError(f"{json_path}: {key}[{n}] is malformed: {e}") from e
        return cls(out_path)


def _write_records(
    out: IO[str], records: Iterator[tuple[dict[str, Any], NDArray[np.float32]]]
) -> None:
    """Records as the seed's ``generated_tokens`` entries, streamed one at a time."""
    for n, (info, attn) in enumerate(records):
        token = {
            "step": info["step"],
            "token_id": info["token_id"],
            "text": info["text"],
            "position": info["position"],
            "timestamp": info["timestamp_ms"],
            "attention": {"shape": list(attn.shape), "context_length": attn.shape[-1]},
        }
        head = json.dumps(token, ensure_ascii=False)[:-2]  # reopen the attention object
        out.write(("," if n else "") + head + ', "data": ')
        _write_floats(out, attn)
        out.write("}}")


def _write_floats(out: IO[str], values: NDArray[np.float32]) -> None:
    """A flat JSON array of float32 values, written as the doubles they are (what the seed's
    ``JSON.stringify`` of a Float32Array gives), in slices to bound memory."""
    flat = values.reshape(-1)
    out.write("[")
    for start in range(0, len(flat), 1 << 16):
        part = flat[start : start + (1 << 16)].tolist()
        text = json.dumps(part)[1:-1]
        out.write(("," if start else "") + text)
    out.write("]")
