"""``attnfast.capture``: record a model's attention while it generates.

How a capture follows generation: a wrapper shadowing the model's ``forward`` sees each call's
``input_ids`` and ``attention_mask``; the attention layers show the capture their queries and
keys (see :mod:`attnfast.hooks.targets`); when the call ends, the step is computed for the
whole batch: on the CPU by one Rust call that reads the queries and keys in place
(``_core.attention_step``), elsewhere in torch on the model's device. A call whose keys are
all new (no KV cache yet) starts a new generation; every other call is the next decode step.
The token a step produced is the next call's input, or comes from ``generate()``'s output,
which the capture reads by wrapping the model's ``generate`` while it is active. Steps wait
for their tokens in :mod:`attnfast.hooks.pending`, which hands them to the sink in batches.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from attnfast import _core
from attnfast.exceptions import CaptureError, InvalidInputError
from attnfast.hooks import device_fingerprint as dfp
from attnfast.hooks.pending import (
    EMIT_AFTER_S,
    EMIT_EVERY,
    Generation,
    PendingStep,
    prompt_records,
    to_records,
)
from attnfast.hooks.records import StepRecord
from attnfast.hooks.rows import attention_rows, last_row_bias
from attnfast.hooks.sinks import Sink, make_sink
from attnfast.hooks.targets import (
    attach_hf,
    find_targets,
    mha_observer_hook,
    set_observer,
    shadow,
)
from attnfast.store import Written

MODES = ("fingerprint", "topk", "full")
# Attention modules under an active capture, by id: a second capture on the same layers would
# take their observers from the first, so it is refused.
_ACTIVE: dict[int, str] = {}
# Memory for the prompt rows of one chunk in mode "full" with prefill (all layers at once).
FULL_PREFILL_BYTES = 64 << 20
# Prefill rows are recomputed this many queries at a time, bounding the extra memory to
# chunk x heads x context per layer.
PREFILL_CHUNK = 64
_SENTENCE_END = (".", "!", "?", "\n")


class _Forward:
    """What one forward call of the model has shown the capture so far."""

    __slots__ = (
        "attention_mask",
        "biases",
        "captured",
        "fresh",
        "input_ids",
        "keys",
        "lean",
        "prefill",
        "prefill_rows",
        "q_len",
        "queries",
        "rows",
        "scales",
        "started",
    )

    def __init__(self, input_ids: torch.Tensor | None, attention_mask: Any) -> None:
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.started = self.captured = self.fresh = False
        # True when the Rust kernel recomputes the last rows when the forward ends, from the
        # per-layer lists below (float32 CPU tensors outside autograd, no prefill rows)
        self.lean = False
        self.queries: list[Any] = []  # (B, H, Q, D)
        self.keys: list[Any] = []  # (B, KV, n, D)
        self.biases: list[Any] = []  # (B|1, H|1, n) additive masks or None
        self.scales: list[Any] = []
        self.rows: dict[int, torch.Tensor] = {}  # layer -> (B, H, n)
        self.prefill: dict[int, list[torch.Tensor]] = {}  # layer -> [(B, Qc, 12)]
        # Mode "full" with prefill: layer -> rows(start, count), computed when the forward
        # ends, a chunk of prompt queries across all layers at a time.
        self.prefill_rows: dict[int, Callable[[int, int], torch.Tensor]] = {}
        self.q_len = 0


class Capture:
    """An active capture; use :func:`capture`. ``records`` holds the steps when no sink was
    given; ``steps_captured`` and ``prompt_rows_captured`` count them either way, and with a
    store as the sink ``written`` says what it stored once the capture closed."""

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
            raise InvalidInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if every_n < 1:
            raise InvalidInputError(f"every_n must be at least 1, got {every_n}")
        if topk < 1:
            raise InvalidInputError(f"topk must be at least 1, got {topk}")
        self.model = model
        self.mode, self.every_n, self.topk, self.prefill = mode, every_n, topk, prefill
        self._topk_columns = topk if mode == "topk" else 0
        self._want_rows = mode == "full"
        all_targets = find_targets(model)
        if layers is None:
            self.targets = all_targets
        else:
            wanted = sorted(set(int(x) for x in layers))
            bad = [x for x in wanted if not 0 <= x < len(all_targets)]
            if bad or not wanted:
                raise InvalidInputError(
                    f"layers {bad or wanted} are not in the model's {len(all_targets)} "
                    f"attention layers (0..{len(all_targets) - 1})"
                )
            self.targets = [all_targets[i] for i in wanted]
        self.layer_ids = tuple(t.layer for t in self.targets)
        self._slot = {id(t.module): n for n, t in enumerate(self.targets)}
        self.heads = None if heads is None else sorted(set(int(h) for h in heads))
        if self.heads is not None and (not self.heads or min(self.heads) < 0):
            raise InvalidInputError(
                f"heads must be non-negative head indices, got {list(heads or [])}"
            )
        self.tokenizer = tokenizer if tokenizer is not None else _default_tokenizer(model)
        self._eos = _eos_ids(model, self.tokenizer)
        self._texts: dict[int, str] = {}
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
        self.prompt_rows_captured = 0
        self._gen: Generation | None = None
        self._generations = 0
        self._sequences = 0
        self._fw: _Forward | None = None
        self._pending: list[PendingStep] = []
        self._undo: list[Callable[[], object]] = []
        # The torch path runs on GPUs; tests set this to run it on the CPU too.
        self.torch_math = False

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Capture:
        taken = [t for t in self.targets if id(t.module) in _ACTIVE]
        if taken or id(self.model) in _ACTIVE:
            raise CaptureError(
                f"a capture is already active on {type(self.model).__name__} (its layer "
                f"{taken[0].layer if taken else 0}): close it before starting another; "
                "nested captures on one model would take each other's steps"
            )
        try:
            self._attach()
            for module in (self.model, *(t.module for t in self.targets)):
                _ACTIVE[id(module)] = self._base
                self._undo.append(functools.partial(_ACTIVE.pop, id(module), None))
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

    @property
    def written(self) -> Written | None:
        """With a store as the sink, once the capture closed: rows stored, and rows refused
        because their ``(request_id, step)`` was stored already (None for other sinks)."""
        return getattr(self.sink, "written", None)

    def _attach(self) -> None:
        impl = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        for slot, t in enumerate(self.targets):
            observe = self._layer_observer(slot)
            if t.kind == "hf":
                self._undo.append(attach_hf(t.module, observe, impl or "sdpa"))
            elif t.kind == "hf-eager":
                handle = t.module.register_forward_hook(self._eager_hook)
                self._undo.append(handle.remove)
            elif t.kind == "torch-mha":
                self._undo.append(mha_observer_hook(t.module, observe))  # type: ignore[arg-type]
            else:
                self._undo.append(set_observer(t.module, observe))
        if any(t.module is self.model for t in self.targets):
            # The model is itself the attention layer (nn.MultiheadAttention), whose rows come
            # from a forward hook: the step ends in a hook registered after it.
            pre = self.model.register_forward_pre_hook(self._begin, with_kwargs=True)
            post = self.model.register_forward_hook(self._end)
            self._undo += [pre.remove, post.remove]
        else:
            # A wrapper shadowing ``forward`` costs a few microseconds per call less than
            # module hooks, which matters on small models (a decode step near a millisecond).
            self._undo.append(shadow(self.model, "forward", self._wrap_forward))
        if callable(getattr(self.model, "generate", None)):
            self._undo.append(shadow(self.model, "generate", self._wrap_generate))

    def _detach(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _wrap_forward(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        model = self.model

        # functools.wraps keeps the signature visible: generate() inspects forward's
        # parameters to decide what to pass (position ids for left padding, among others).
        @functools.wraps(forward)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self._begin(model, args, kwargs)
            out = forward(*args, **kwargs)
            self._end(model, args, out)
            return out

        return wrapped

    def _wrap_generate(self, generate: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(generate)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self._check_generation(kwargs)
            out = generate(*args, **kwargs)
            sequences = out if isinstance(out, torch.Tensor) else getattr(out, "sequences", None)
            if isinstance(sequences, torch.Tensor):
                self._label_from(sequences)
            return out

        return wrapped

    def _check_generation(self, kwargs: dict[str, Any]) -> None:
        """Refuses, before anything runs, generation that reorders the KV cache between steps
        or feeds several tokens per step: the steps captured would not be the tokens
        ``generate`` returns."""
        config = kwargs.get("generation_config") or getattr(self.model, "generation_config", None)

        def option(name: str) -> Any:
            return kwargs[name] if name in kwargs else getattr(config, name, None)

        reasons = []
        if (option("num_beams") or 1) > 1:
            reasons.append(f"beam search (num_beams={option('num_beams')})")
        if (option("num_beam_groups") or 1) > 1:
            reasons.append("group beam search")
        if option("assistant_model") is not None or option("prompt_lookup_num_tokens"):
            reasons.append("assisted (speculative) decoding")
        if option("penalty_alpha") and (option("top_k") or 0) > 1:
            reasons.append("contrastive search")
        if reasons:
            raise CaptureError(
                f"capture cannot follow {reasons[0]}: it reorders the KV cache or feeds several "
                "tokens per step, so the steps captured would not be the tokens generate() "
                "returns. Capture greedy or sampled generation (num_beams=1)."
            )

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
        pending = self._pending
        if (
            pending
            and pending[-1].tokens is None
            and ids is not None
            and ids.shape == (len(pending[-1].host), 1)
        ):
            pending[-1].tokens = ids  # the tokens the last step chose
        self._fw = _Forward(ids, kwargs.get("attention_mask"))

    def _refuse_encoder_steps(self, module: nn.Module) -> None:
        """An encoder's layer (one that says it is not causal) has no decode step: without
        prefill=True the last row of each padded sequence would be recorded as if it were one,
        and right-padded rows would be lost."""
        if not self.prefill and getattr(module, "is_causal", True) is False:
            raise CaptureError(
                f"{type(module).__name__} is an encoder's attention (not causal): there are no "
                "decode steps to record; use prefill=True to record every token's row"
            )

    def _start(
        self, fw: _Forward, batch: int, q_len: int, n: int, heads: int, causal: bool
    ) -> bool:
        """First attention call of a forward: decides whether it starts a generation and
        whether its step is captured."""
        if self.heads is not None and self.heads[-1] >= heads:
            raise CaptureError(
                f"head {self.heads[-1]} is out of range: the layer has {heads} heads"
            )
        fw.started = True
        fw.fresh = n == q_len
        fw.q_len = q_len
        if not fw.fresh and q_len > 1:
            raise CaptureError(
                f"a forward call fed {q_len} tokens on top of a KV cache of {n - q_len} "
                "(speculative or assisted decoding, or a prompt fed in pieces): capture "
                "records one new token per step. Feed the prompt in one call."
            )
        if fw.fresh or self._gen is None or len(self._gen.pad_list) != batch:
            self._emit_pending()
            self._new_generation(fw, batch, n)
            assert self._gen is not None
            self._gen.causal = causal
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
        self._gen = Generation(g, ids, pads.cpu(), n, seqs, real)
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

    def _layer_observer(self, slot: int) -> Callable[..., None]:
        """The observer of one attention layer. Runs once per layer per decode step, so the
        common case (a captured CPU step) only files the layer's queries and keys."""

        def observe(
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
            if not fw.started:
                self._refuse_encoder_steps(module)
            if not fw.started and not self._start_observed(fw, query, key, is_causal):
                return
            if fw.lean:
                # The Rust kernel recomputes every layer's last row in one call when the
                # forward ends, reading the queries and keys in place.
                fw.queries[slot] = query
                fw.keys[slot] = key
                if mask is not None:
                    fw.biases[slot] = last_row_bias(mask, key.shape[2])
                fw.scales[slot] = query.shape[-1] ** -0.5 if scaling is None else scaling
            elif fw.captured:
                # The torch path: this layer's rows recomputed right away.
                with torch.no_grad():
                    self._collect(
                        fw,
                        slot,
                        query.shape[2],
                        lambda start, count: attention_rows(
                            query,
                            key,
                            q_start=start,
                            q_count=count,
                            scaling=scaling,
                            mask=mask,
                            is_causal=is_causal,
                        ),
                    )

        return observe

    def _start_observed(
        self, fw: _Forward, query: torch.Tensor, key: torch.Tensor, causal: bool
    ) -> bool:
        """:meth:`_start` from the first layer's queries and keys, and the choice of path:
        the Rust kernel (``fw.lean``) for float32 CPU tensors outside autograd, unless the
        prompt's rows are wanted; torch otherwise."""
        batch, heads, q_len, _ = query.shape
        if not self._start(fw, batch, q_len, key.shape[2], heads, causal):
            return False
        gen = self._gen
        assert gen is not None
        if gen.kernel_ok is None:  # device and dtypes: once per generation
            gen.kernel_ok = (
                query.device.type == "cpu"
                and query.dtype == key.dtype == torch.float32
                and not self.torch_math
            )
        fw.lean = (
            gen.kernel_ok
            and not (query.requires_grad or key.requires_grad)
            and not (fw.fresh and self.prefill and q_len > 1)
        )
        if fw.lean:
            layers = len(self.targets)
            fw.queries, fw.keys = [None] * layers, [None] * layers
            fw.biases, fw.scales = [None] * layers, [None] * layers
        return True

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
        causal = bool(getattr(module, "is_causal", True))
        if not fw.started:
            self._refuse_encoder_steps(module)
        if not fw.started and not self._start(
            fw, weights.shape[0], q_len, n, weights.shape[1], causal
        ):
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
        if self._want_rows:
            # Full rows need every layer of a query at once: kept as a function of the
            # layer's queries and keys, evaluated when the forward ends.
            fw.prefill_rows[slot] = rows
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
        return rows if self.heads is None else rows[:, self.heads]

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        fw, self._fw = self._fw, None
        if fw is None or not fw.started:
            return
        gen = self._gen
        assert gen is not None
        if fw.lean:
            # The hot path: one Rust call recomputes every layer's last query row from the
            # queries and keys the layers showed and summarises them, for the whole batch.
            try:
                host, full, n = _core.attention_step(
                    fw.queries,
                    fw.keys,
                    fw.biases,
                    fw.scales,
                    self.heads,
                    gen.pad_list,
                    self._topk_columns,
                    self._want_rows,
                )
            except (AttributeError, TypeError):
                # A layer that did not run left None behind.
                self._check_layers_ran([i for i, k in enumerate(fw.keys) if k is not None])
                raise
            self._add_step(gen, n, host, full)
        elif fw.captured and fw.rows:
            self._check_layers_ran(list(fw.rows))
            layer_rows = [fw.rows[i] for i in range(len(self.targets))]
            prefilled = bool(fw.prefill or fw.prefill_rows)
            with torch.no_grad():
                if prefilled:
                    self._emit_prefill(fw, gen)
                if not (prefilled and not gen.causal):  # an encoder's rows are all prompt rows
                    if layer_rows[0].device.type == "cpu" and not self.torch_math:
                        host, full, n = self._step_from_rows(layer_rows, gen)
                    else:
                        host, full, n = dfp.step_summary(
                            layer_rows, gen.pads, self._topk_columns, self._want_rows
                        )
                    self._add_step(gen, n, host, full)
        gen.step += 1

    def _check_layers_ran(self, ran: list[int]) -> None:
        missing = sorted(set(range(len(self.targets))) - set(ran))
        if missing:
            raise CaptureError(
                f"layers {[self.layer_ids[i] for i in missing]} did not run their attention "
                "during this forward call"
            )

    def _add_step(self, gen: Generation, n: int, host: np.ndarray, full: Any) -> None:
        """Files a step's summaries (``host``: fingerprint, sink mass, top-k scores and
        positions per sequence; ``full``: the rows ``(B, L, H, n)`` in mode "full")."""
        now = time.time()
        pending = self._pending
        pending.append(PendingStep(gen, gen.step, n, host, full, now))
        # Full rows leave at once (with the step before them): they are large, and memory
        # must stay bounded however long the generation.
        if (
            len(pending) > EMIT_EVERY
            or full is not None
            or now - pending[0].timestamp > EMIT_AFTER_S
        ):
            self._emit_pending(keep_last=True)

    def _step_from_rows(
        self, layer_rows: list[torch.Tensor], gen: Generation
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Rows the model gave (eager attention, or the prefill's last row), summarised by
        the Rust kernel: one call for the whole batch."""
        rows = torch.stack(layer_rows, dim=1).numpy()  # (B, L, H, n), float32
        host = _core.step_summary(rows, gen.pad_list, self._topk_columns)
        return host, rows if self.mode == "full" else None, rows.shape[-1]

    def _emit_prefill(self, fw: _Forward, gen: Generation) -> None:
        """Records of the prompt rows: fingerprints, and in mode "full" the rows themselves,
        computed a chunk of queries at a time across layers (memory: one chunk)."""
        layers = range(len(self.targets))
        if not fw.prefill_rows:
            stats = torch.stack([torch.cat(fw.prefill[i], dim=1) for i in layers])
            fps = dfp.assemble(stats).cpu().numpy()  # (B, Q, 20)
            self._write_prompt(
                prompt_records(fps, fw.input_ids, gen, layer_ids=self.layer_ids, text=self._text)
            )
            return
        q_len = fw.q_len
        sample = self._heads(fw.prefill_rows[0](0, 1))  # (B, H, 1, n)
        per_query = 4 * sample.numel() * len(self.targets)
        chunk = max(1, FULL_PREFILL_BYTES // per_query)
        for start in range(0, q_len, chunk):
            count = min(chunk, q_len - start)
            rows = [self._heads(fw.prefill_rows[i](start, count).float()) for i in layers]
            q0 = rows[0].shape[-1] - q_len + start
            stats = torch.stack([dfp.layer_stats(r, q0) for r in rows])
            fps = dfp.assemble(stats).cpu().numpy()  # (B, count, 20)
            full = torch.stack(rows, dim=1).cpu().numpy()  # (B, L, H, count, n)
            self._write_prompt(
                prompt_records(
                    fps,
                    fw.input_ids,
                    gen,
                    layer_ids=self.layer_ids,
                    text=self._text,
                    first=start,
                    attention=full,
                )
            )

    # --- tokens ---------------------------------------------------------------------------

    def _label_from(self, sequences: torch.Tensor) -> None:
        """Labels pending steps from ``generate()``'s output and drops steps that ran after a
        sequence had produced its end-of-sequence token."""
        gen = self._gen
        if gen is None:
            return
        seq = sequences.tolist()
        eos = self._eos
        ends = []
        for row in seq:
            end = next((i for i in range(gen.prompt_len, len(row)) if row[i] in eos), None)
            ends.append(end)
        kept = []
        for r in self._records(self._pending):
            b = r.sequence - gen.sequences[0]
            if not 0 <= b < len(seq):
                continue
            end = ends[b]
            if end is not None and r.index > end:
                continue
            if r.index < len(seq[b]) and r.token_id is None:
                r.token_id = int(seq[b][r.index])
                r.token_text = self._text(r.token_id)
            kept.append(r)
        self._pending = []
        self._write(kept)

    def _emit_pending(self, keep_last: bool = False) -> None:
        """Hands the pending steps to the sink; ``keep_last`` holds back the newest step while
        its token is still unknown."""
        steps, self._pending = self._pending, []
        if keep_last and steps and steps[-1].tokens is None:
            self._pending = [steps.pop()]
        if steps:
            self._write(self._records(steps))

    def _records(self, steps: list[PendingStep]) -> list[StepRecord]:
        return to_records(
            steps,
            layer_ids=self.layer_ids,
            topk=self.topk if self.mode == "topk" else None,
            text=self._text,
            eos=self._eos,
        )

    def _write(self, records: list[StepRecord]) -> None:
        self.steps_captured += len(records)
        self.sink.write(records)

    def _write_prompt(self, records: list[StepRecord]) -> None:
        self.prompt_rows_captured += len(records)
        self.sink.write(records)

    def _text(self, token_id: int) -> str:
        # Cached per token id: a Hugging Face decode call costs more than a whole step's
        # capture, and a token's text alone does not depend on its neighbours.
        text = self._texts.get(token_id)
        if text is None:
            tok = self.tokenizer
            if tok is None:
                text = ""
            elif hasattr(tok, "token_text"):
                text = str(tok.token_text(token_id))
            else:
                text = str(tok.decode([token_id]))
            self._texts[token_id] = text
        return text


def capture(model: nn.Module, mode: str = "fingerprint", **options: Any) -> Capture:
    """Records ``model``'s attention while it generates, without changing how it runs.

    Use it as a context manager around ``model.generate(...)`` or a hand-written decode loop
    with a KV cache. Each decode step of each sequence becomes a :class:`StepRecord` with the
    v1 fingerprint, the attention-sink mass and the captured layer ids; ``mode="topk"`` adds the
    ``topk`` most attended positions and their scores, ``mode="full"`` the full rows.

    Options (keywords of :class:`Capture`): ``sink`` is a :class:`~attnfast.FingerprintStore`,
    a ``.attn`` path (``mode="full"``), a callable taking batches of records, or None to
    keep them in ``cap.records``; ``layers``/``heads`` select what is captured (indices among
    the model's attention layers and their heads); ``every_n`` keeps every n-th step;
    ``topk`` (16); ``prefill=True`` adds a fingerprint for every prompt position
    (``step=None``); ``request_id`` (a str, or one per sequence); ``tokenizer`` (anything with
    ``decode``) gives token texts, the reference model's byte tokenizer by default;
    ``model_id``.
    """
    return Capture(model, mode=mode, **options)


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
