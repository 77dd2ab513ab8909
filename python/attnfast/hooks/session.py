"""``attnfast.capture``: record a model's attention while it generates.

How a capture follows generation: a forward pre-hook on the model sees each call's
``input_ids`` and ``attention_mask``; the attention layers show the capture their queries and
keys (see :mod:`attnfast.hooks.targets`); a forward hook on the model turns the rows gathered
during the call into one record per sequence. A call whose keys are all new (no KV cache yet)
starts a new generation; every other call is the next decode step. The token a step produced
is the next call's input, or comes from ``generate()``'s output, which the capture reads by
wrapping the model's ``generate`` while it is active.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from attnfast.exceptions import CaptureError
from attnfast.fingerprint import compute_fingerprints
from attnfast.hooks import device_fingerprint as dfp
from attnfast.hooks.records import StepRecord
from attnfast.hooks.rows import attention_rows
from attnfast.hooks.sinks import Sink, make_sink
from attnfast.hooks.targets import attach_hf, find_targets, mha_observer_hook

MODES = ("fingerprint", "topk", "full")
# Prefill rows are recomputed this many queries at a time, bounding the extra memory to
# chunk x heads x context per layer.
PREFILL_CHUNK = 64
_SENTENCE_END = (".", "!", "?", "\n")


@dataclass
class _Generation:
    index: int
    request_ids: list[str]
    pads: torch.Tensor  # (B,) left-padding per sequence
    prompt_len: int  # padded
    sequences: list[int]  # file sequence number of each batch row
    real: torch.Tensor | None  # (B, S) prompt mask: True = a real token
    step: int = 0

    def is_real(self, b: int, position: int) -> bool:
        return self.real is None or position >= self.real.shape[1] or bool(self.real[b, position])


@dataclass
class _Forward:
    input_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    started: bool = False
    captured: bool = False
    fresh: bool = False
    rows: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H, n)
    prefill: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # layer -> [(B,Qc,12)]


class Capture:
    """An active capture; use :func:`capture`. ``records`` holds the steps when no sink was
    given; ``steps_captured`` counts them either way."""

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: str = "fingerprint",
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        every_n: int = 1,
        sink: Any = None,
        topk: int = 16,
        prefill: bool = False,
        request_id: str | Sequence[str] | None = None,
        tokenizer: Any = None,
        model_id: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise CaptureError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if every_n < 1:
            raise CaptureError(f"every_n must be at least 1, got {every_n}")
        if topk < 1:
            raise CaptureError(f"topk must be at least 1, got {topk}")
        self.model = model
        self.mode, self.every_n, self.topk, self.prefill = mode, every_n, topk, prefill
        all_targets = find_targets(model)
        if layers is None:
            self.targets = all_targets
        else:
            wanted = sorted(set(int(x) for x in layers))
            bad = [x for x in wanted if not 0 <= x < len(all_targets)]
            if bad or not wanted:
                raise CaptureError(
                    f"layers {bad or wanted} are not in the model's {len(all_targets)} "
                    f"attention layers (0..{len(all_targets) - 1})"
                )
            self.targets = [all_targets[i] for i in wanted]
        self.layer_ids = tuple(t.layer for t in self.targets)
        self._slot = {id(t.module): n for n, t in enumerate(self.targets)}
        self.heads = None if heads is None else sorted(set(int(h) for h in heads))
        if self.heads is not None and (not self.heads or min(self.heads) < 0):
            raise CaptureError(f"heads must be non-negative head indices, got {list(heads or [])}")
        self.tokenizer = tokenizer if tokenizer is not None else _default_tokenizer(model)
        self.model_id = model_id or _model_name(model)
        self.request_id = request_id
        self._base = request_id if isinstance(request_id, str) else f"cap-{uuid.uuid4().hex[:10]}"
        meta = {
            "model": self.model_id,
            "mode": mode,
            "layers": list(self.layer_ids),
            "heads": self.heads,
            "every_n": every_n,
        }
        self.sink: Sink = make_sink(sink, mode=mode, model_id=self.model_id, meta=meta)
        self.records: list[StepRecord] = getattr(self.sink, "records", [])
        self.steps_captured = 0
        self._gen: _Generation | None = None
        self._generations = 0
        self._sequences = 0
        self._fw: _Forward | None = None
        self._pending: list[StepRecord] = []
        self._undo: list[Callable[[], None]] = []
        # The torch path runs on GPUs; tests set this to run it on the CPU too.
        self.torch_math = False

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Capture:
        try:
            self._attach()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._detach()
            self._emit_pending()
        finally:
            self.sink.close()

    def _attach(self) -> None:
        impl = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        for t in self.targets:
            if t.kind == "hf":
                self._undo.append(attach_hf(t.module, self._observe, impl or "sdpa"))
            elif t.kind == "hf-eager":
                handle = t.module.register_forward_hook(self._eager_hook)
                self._undo.append(handle.remove)
            elif t.kind == "torch-mha":
                self._undo.append(mha_observer_hook(t.module, self._observe))  # type: ignore[arg-type]
            else:
                self._undo.append(_set_observer(t.module, self._observe))
        pre = self.model.register_forward_pre_hook(self._begin, with_kwargs=True)
        # Registered after the layer hooks, so on a model that is itself the attention layer
        # (nn.MultiheadAttention) the rows exist before the step is finished.
        post = self.model.register_forward_hook(self._end)
        self._undo += [pre.remove, post.remove]
        generate = getattr(self.model, "generate", None)
        if callable(generate):
            # An instance attribute shadows the class's method until the capture ends.
            setattr(self.model, "generate", self._wrap_generate(generate))  # noqa: B010
            self._undo.append(lambda: delattr(self.model, "generate"))

    def _detach(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _wrap_generate(self, generate: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = generate(*args, **kwargs)
            sequences = out if isinstance(out, torch.Tensor) else getattr(out, "sequences", None)
            if isinstance(sequences, torch.Tensor):
                self._label_from(sequences)
            return out

        return wrapped

    # --- per forward ----------------------------------------------------------------------

    def _begin(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if (
            ids is None
            and args
            and isinstance(args[0], torch.Tensor)
            and not args[0].is_floating_point()
        ):
            ids = args[0]
        if ids is not None and ids.dim() == 2 and ids.shape[1] == 1 and self._pending:
            self._label(ids[:, 0])
        self._fw = _Forward(ids, kwargs.get("attention_mask"))

    def _start(self, fw: _Forward, batch: int, q_len: int, n: int) -> bool:
        """First attention call of a forward: decides whether it starts a generation and
        whether its step is captured."""
        fw.started = True
        fw.fresh = n == q_len
        if fw.fresh or self._gen is None or self._gen.pads.shape[0] != batch:
            self._emit_pending()
            self._new_generation(fw, batch, n)
        gen = self._gen
        assert gen is not None
        fw.captured = gen.step % self.every_n == 0
        return fw.captured

    def _new_generation(self, fw: _Forward, batch: int, n: int) -> None:
        mask = fw.attention_mask
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == batch:
            real = mask.bool().cpu()
            # Left padding (generation) shifts a sequence's positions; right padding (an
            # encoder batch) leaves rows that are padding, which are skipped.
            pads = real.long().argmax(-1)
        else:
            real = None
            pads = torch.zeros(batch, dtype=torch.long)
        g = self._generations
        self._generations += 1
        ids = self._request_ids(g, batch)
        seqs = list(range(self._sequences, self._sequences + batch))
        self._sequences += batch
        self._gen = _Generation(g, ids, pads.cpu(), n, seqs, real)
        self.sink.start_sequences(
            [
                {"request_id": rid, "prompt_tokens": self._prompt_tokens(fw, b, int(pads[b]))}
                for b, rid in enumerate(ids)
            ]
        )

    def _request_ids(self, generation: int, batch: int) -> list[str]:
        if isinstance(self.request_id, list | tuple) and not isinstance(self.request_id, str):
            if len(self.request_id) != batch:
                raise CaptureError(
                    f"{len(self.request_id)} request ids given for a batch of {batch} sequences"
                )
            base = [str(r) for r in self.request_id]
        else:
            base = [self._base if batch == 1 else f"{self._base}/{b}" for b in range(batch)]
        return [r if generation == 0 else f"{r}#{generation}" for r in base]

    def _prompt_tokens(self, fw: _Forward, b: int, pad: int) -> list[dict[str, Any]]:
        ids = fw.input_ids
        if ids is None or ids.dim() != 2:
            return []
        tokens, sentence = [], 0
        for pos, tid in enumerate(ids[b, pad:].tolist()):
            text = self._text(tid)
            tokens.append(
                {
                    "token_id": tid,
                    "text": text,
                    "position": pos,
                    "turn_id": 0,
                    "message_role": "user",
                    "sentence_id": sentence,
                }
            )
            if text.rstrip(" ").endswith(_SENTENCE_END):
                sentence += 1
        return tokens

    def _observe(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float | None,
        is_causal: bool,
    ) -> None:
        fw = self._fw
        if fw is None:
            return  # called outside the model's forward (a layer used on its own)
        q_len, n = query.shape[2], key.shape[2]
        if not fw.started and not self._start(fw, query.shape[0], q_len, n):
            return
        if not fw.captured:
            return
        slot = self._slot[id(module)]

        def rows(q_start: int, q_count: int) -> torch.Tensor:
            return attention_rows(
                query,
                key,
                q_start=q_start,
                q_count=q_count,
                scaling=scaling,
                mask=mask,
                is_causal=is_causal,
            )

        with torch.no_grad():
            self._collect(fw, slot, q_len, rows)

    def _eager_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        fw = self._fw
        if fw is None or not isinstance(weights, torch.Tensor):
            if fw is not None and weights is None:
                raise CaptureError(
                    f"{type(module).__name__} returned no attention weights under eager attention"
                )
            return
        q_len, n = weights.shape[-2], weights.shape[-1]
        if not fw.started and not self._start(fw, weights.shape[0], q_len, n):
            return
        if fw.captured:
            with torch.no_grad():
                self._collect(
                    fw, self._slot[id(module)], q_len, lambda s, c: weights[:, :, s : s + c]
                )

    def _collect(
        self, fw: _Forward, slot: int, q_len: int, rows: Callable[[int, int], torch.Tensor]
    ) -> None:
        if not (fw.fresh and self.prefill and q_len > 1):
            fw.rows[slot] = self._heads(rows(q_len - 1, 1)[:, :, 0].float())
            return
        chunks = []
        for start in range(0, q_len, PREFILL_CHUNK):
            count = min(PREFILL_CHUNK, q_len - start)
            r = self._heads(rows(start, count).float())
            chunks.append(dfp.layer_stats(r, r.shape[-1] - q_len + start))
        # The last chunk's last row is the step-0 row: not recomputed.
        fw.rows[slot] = r[:, :, -1]
        fw.prefill[slot] = chunks

    def _heads(self, rows: torch.Tensor) -> torch.Tensor:
        if self.heads is None:
            return rows
        if self.heads[-1] >= rows.shape[1]:
            raise CaptureError(
                f"head {self.heads[-1]} is out of range: the layer has {rows.shape[1]} heads"
            )
        return rows[:, self.heads]

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        fw, self._fw = self._fw, None
        if fw is None or not fw.started:
            return
        gen = self._gen
        assert gen is not None
        if fw.captured and fw.rows:
            if len(fw.rows) != len(self.targets):
                missing = sorted(set(range(len(self.targets))) - set(fw.rows))
                raise CaptureError(
                    f"layers {[self.layer_ids[i] for i in missing]} did not run their attention "
                    "during this forward call"
                )
            with torch.no_grad():
                self._finish_step(fw, gen)
        gen.step += 1

    def _finish_step(self, fw: _Forward, gen: _Generation) -> None:
        layer_rows = [fw.rows[i] for i in range(len(self.targets))]
        if layer_rows[0].device.type == "cpu" and not self.torch_math:
            host, full, n = self._step_on_cpu(layer_rows, gen)
        else:
            host, full, n = self._step_on_device(layer_rows, gen)
        batch = host.shape[0]
        k = min(self.topk, n)
        now = time.time()
        records = []
        for b in range(batch):
            pad = int(gen.pads[b])
            if not gen.is_real(b, n - 1):
                continue  # the last row of a right-padded sequence is padding
            r = StepRecord(
                request_id=gen.request_ids[b],
                sequence=gen.sequences[b],
                step=gen.step,
                position=n - pad,
                fingerprint=host[b, :20].copy(),
                sink_mass=float(host[b, 20]),
                layer_ids=self.layer_ids,
                timestamp=now,
                index=n,
            )
            if self.mode == "topk":
                r.topk_scores = host[b, 21 : 21 + k].astype(np.float32)
                r.topk_positions = host[b, 21 + k : 21 + 2 * k].astype(np.int32)
            if full is not None:
                r.attention = np.ascontiguousarray(full[:, b, :, pad:])
            records.append(r)
        if fw.prefill:
            self._emit_prefill(fw, gen)
        self._pending.extend(records)
        self.steps_captured += len(records)

    def _step_on_cpu(
        self, layer_rows: list[torch.Tensor], gen: _Generation
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """The Rust kernel on ``(B, L, H, n)``: one call for the whole batch. Returns the
        host columns (fingerprint, sink mass, top-k scores and positions), the full rows
        ``(L, B, H, n)`` in mode "full", and ``n``."""
        a = torch.stack(layer_rows, dim=1).numpy()  # (B, L, H, n), float32
        batch, n = a.shape[0], a.shape[-1]
        fp = compute_fingerprints(a, np.full(batch, n - 1))
        pads = gen.pads.numpy()
        sums = a.sum(-1)  # (B, L, H): rows are normalised by their own sums, as in the spec
        sink = (a[np.arange(batch), :, :, pads] / sums).mean(axis=(1, 2))
        parts = [fp, sink[:, None].astype(np.float32)]
        if self.mode == "topk":
            p = (a / sums[..., None]).mean(axis=(1, 2))
            k = min(self.topk, n)
            top = np.argsort(-p, axis=-1, kind="stable")[:, :k]
            parts += [np.take_along_axis(p, top, -1), (top - pads[:, None]).astype(np.float32)]
        full = a.transpose(1, 0, 2, 3) if self.mode == "full" else None
        return np.concatenate(parts, axis=-1), full, n

    def _step_on_device(
        self, layer_rows: list[torch.Tensor], gen: _Generation
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """The same in torch on the model's device; only the small host columns (and the
        full rows in mode "full") are copied to the host."""
        rows = torch.stack(layer_rows)  # (L, B, H, n)
        n = rows.shape[-1]
        rows = rows / rows.sum(-1, keepdim=True)
        fp = dfp.assemble(dfp.layer_stats(rows.unsqueeze(-2), n - 1))[:, 0]  # (B, 20)
        p = rows.mean(2).mean(0)  # (B, n): mean attention over layers and heads
        pads = gen.pads.to(p.device)
        parts = [fp, p.gather(1, pads[:, None])]
        if self.mode == "topk":
            scores, positions = p.topk(min(self.topk, n), dim=-1)
            parts += [scores, (positions - pads[:, None]).float()]
        # One transfer per step: in fingerprint mode 80 bytes of fingerprint and 4 of sink
        # mass per sequence leave the device.
        host = torch.cat(parts, dim=-1).cpu().numpy()
        full = rows.cpu().numpy() if self.mode == "full" else None
        return host, full, n

    def _emit_prefill(self, fw: _Forward, gen: _Generation) -> None:
        stats = torch.stack([torch.cat(fw.prefill[i], dim=1) for i in range(len(self.targets))])
        fps = dfp.assemble(stats).cpu().numpy()  # (B, Q, 20)
        ids = fw.input_ids
        now = time.time()
        records = []
        for b in range(fps.shape[0]):
            pad = int(gen.pads[b])
            for q in range(pad, fps.shape[1] - 1):
                if not gen.is_real(b, q):
                    continue
                # Row q chose the token at q + 1 (a prompt token, or the first generated one).
                token = int(ids[b, q + 1]) if ids is not None and q + 1 < ids.shape[1] else None
                records.append(
                    StepRecord(
                        request_id=gen.request_ids[b],
                        sequence=gen.sequences[b],
                        step=None,
                        position=q + 1 - pad,
                        fingerprint=fps[b, q],
                        sink_mass=float("nan"),
                        layer_ids=self.layer_ids,
                        timestamp=now,
                        token_id=token,
                        token_text=None if token is None else self._text(token),
                    )
                )
        self.sink.write(records)

    # --- tokens ---------------------------------------------------------------------------

    def _label(self, tokens: torch.Tensor) -> None:
        """The next call's inputs are the tokens the pending steps produced."""
        values = tokens.tolist()
        seq0 = self._gen.sequences[0] if self._gen else 0
        for r in self._pending:
            b = r.sequence - seq0
            if 0 <= b < len(values):
                r.token_id = int(values[b])
        self._emit_pending()

    def _label_from(self, sequences: torch.Tensor) -> None:
        """Labels pending steps from ``generate()``'s output and drops steps that ran after a
        sequence had produced its end-of-sequence token."""
        gen = self._gen
        if gen is None:
            return
        seq = sequences.tolist()
        eos = _eos_ids(self.model, self.tokenizer)
        ends = []
        for row in seq:
            end = next((i for i in range(gen.prompt_len, len(row)) if row[i] in eos), None)
            ends.append(end)
        kept = []
        for r in self._pending:
            b = r.sequence - gen.sequences[0]
            if not 0 <= b < len(seq):
                continue
            end = ends[b]
            if end is not None and r.index > end:
                self.steps_captured -= 1
                continue
            if r.index < len(seq[b]):
                r.token_id = int(seq[b][r.index])
            kept.append(r)
        self._pending = kept
        self._emit_pending()

    def _emit_pending(self) -> None:
        if not self._pending:
            return
        records, self._pending = self._pending, []
        for r in records:
            if r.token_id is not None and r.token_text is None:
                r.token_text = self._text(r.token_id)
        self.sink.write(records)

    def _text(self, token_id: int) -> str:
        tok = self.tokenizer
        if tok is None:
            return ""
        if hasattr(tok, "token_text"):
            return str(tok.token_text(token_id))
        return str(tok.decode([token_id]))


def capture(model: nn.Module, mode: str = "fingerprint", **options: Any) -> Capture:
    """Records ``model``'s attention while it generates, without changing how it runs.

    Use it as a context manager around ``model.generate(...)`` or a hand-written decode loop
    with a KV cache. Each decode step of each sequence becomes a :class:`StepRecord` with the
    v1 fingerprint, the attention-sink mass and the captured layer ids; ``mode="topk"`` adds the
    ``topk`` most attended positions and their scores, ``mode="full"`` the full rows.

    Options (keywords of :class:`Capture`): ``sink`` is a :class:`~attnfast.FingerprintStore`,
    a ``.attn`` path (``mode="full"``), a callable taking each forward's records, or None to
    keep them in ``cap.records``; ``layers``/``heads`` select what is captured (indices among
    the model's attention layers and their heads); ``every_n`` keeps every n-th step;
    ``topk`` (16); ``prefill=True`` adds a fingerprint for every prompt position
    (``step=None``); ``request_id`` (a str, or one per sequence); ``tokenizer`` (anything with
    ``decode``) gives token texts, the reference model's byte tokenizer by default;
    ``model_id``.
    """
    return Capture(model, mode=mode, **options)


def _set_observer(module: nn.Module, observer: Callable[..., None]) -> Callable[[], None]:
    setattr(module, "capture_observer", observer)  # noqa: B010
    return lambda: setattr(module, "capture_observer", None)


def _default_tokenizer(model: nn.Module) -> Any:
    from attnfast.models.causal_lm import ByteTokenizer, TinyCausalLM

    return ByteTokenizer() if isinstance(model, TinyCausalLM) else None


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "model_type", None)
    return str(name) if name else type(model).__name__


def _eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (
        getattr(model, "generation_config", None),
        tokenizer,
        getattr(model, "config", None),
    ):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids
