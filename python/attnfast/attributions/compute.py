"""Attributions of a torch model, the seed's way (seed 001's compute.py).

Components are the output channels of the named linear modules of each block: attention q, k,
v and o projections, and the MLP's input and output projections, keyed ``h.{i}.attn.q_proj:5``
and so on, whatever the model calls them; ``wte:0`` is the token embedding and
``output:<token_id>`` an output token. A component is active at a position where its importance
(``|activation|`` by default, or a user function: the plug-in point for SPD, SAE or transcoder
components) is at least ``ci_threshold``; an output token where its probability is at least
0.01.

An edge from source (layer, s_in, c_in) to target (layer, s_out, c_out) is the gradient of the
target's pre-activation with respect to the source layer's activation, times that activation.
s_in = s_out, except from k and v to o inside a block, where s_in runs over 0..s_out. Sources of
a residual reader (q, k, v, the MLP input, the logits) are every earlier residual writer
(``wte``, o, the MLP output); o reads q, k and v of its block; the MLP output reads the MLP
input. Edges with |val| < ``attr_threshold`` are dropped.

Gradients come in batches: the prompt is repeated B times in one forward pass and each copy
back-propagates one target, so one backward pass gives B targets' gradients."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnfast.attributions.graph import AttributionGraph
from attnfast.exceptions import InvalidInputError

#: An output token is a node where its probability is at least this (the seed's rule).
OUTPUT_PROBABILITY = 0.01
PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "down_proj")
_GROUP = {
    p: ("attn" if p.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp") for p in PARTS
}

#: ``importance(layer, activation (S, C)) -> (S, C)``.
Importance = Callable[[str, torch.Tensor], torch.Tensor]


def abs_importance(layer: str, activation: torch.Tensor) -> torch.Tensor:
    """The default importance: the magnitude of the channel's output."""
    return activation.abs()


@dataclass(frozen=True)
class LayerSpec:
    """One layer of components: a module's output channels ``[start, stop)``."""

    name: str
    module: str
    block: int
    part: str
    start: int = 0
    stop: int | None = None


def _canonical(block: int, part: str) -> str:
    return f"h.{block}.{_GROUP[part]}.{part}"


def find_layers(model: torch.nn.Module) -> tuple[list[LayerSpec], str]:
    """The component layers of a model and its token embedding's module name: attnfast's
    built-in model, Llama-style models (``self_attn.q_proj``..., ``mlp.up_proj``/``down_proj``)
    and GPT-2 (``attn.c_attn`` split into q, k, v; ``attn.c_proj``; ``mlp.c_fc``/``c_proj``)."""
    names = dict(model.named_modules())
    specs: list[LayerSpec] = []
    patterns = [
        (
            r"^blocks\.(\d+)\.attn$",
            {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "out_proj"},
            {"c_fc": "ff.net.0", "down_proj": "ff.net.3"},
            "attn",
        ),
        (
            r"^(?:model\.)?layers\.(\d+)\.self_attn$",
            {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj"},
            {"c_fc": "mlp.up_proj", "down_proj": "mlp.down_proj"},
            "self_attn",
        ),
    ]
    for pattern, attn_parts, mlp_parts, attn_name in patterns:
        blocks = sorted(
            (int(m.group(1)), n[: -len(attn_name) - 1])
            for n in names
            if (m := re.match(pattern, n))
        )
        if not blocks:
            continue
        for i, prefix in blocks:
            for part, sub in attn_parts.items():
                specs.append(LayerSpec(_canonical(i, part), f"{prefix}.{attn_name}.{sub}", i, part))
            for part, sub in mlp_parts.items():
                if f"{prefix}.{sub}" in names:
                    specs.append(LayerSpec(_canonical(i, part), f"{prefix}.{sub}", i, part))
        break
    gpt2 = sorted(
        (int(m.group(1)), n[: -len(".attn.c_attn")])
        for n in names
        if (m := re.match(r"^(?:transformer\.)?h\.(\d+)\.attn\.c_attn$", n))
    )
    if not specs and gpt2:
        for i, prefix in gpt2:
            width = int(getattr(names[f"{prefix}.attn.c_attn"], "nf", 0)) // 3
            for k, part in enumerate(("q_proj", "k_proj", "v_proj")):
                specs.append(
                    LayerSpec(
                        _canonical(i, part),
                        f"{prefix}.attn.c_attn",
                        i,
                        part,
                        k * width,
                        (k + 1) * width,
                    )
                )
            specs.append(LayerSpec(_canonical(i, "o_proj"), f"{prefix}.attn.c_proj", i, "o_proj"))
            specs.append(LayerSpec(_canonical(i, "c_fc"), f"{prefix}.mlp.c_fc", i, "c_fc"))
            specs.append(
                LayerSpec(_canonical(i, "down_proj"), f"{prefix}.mlp.c_proj", i, "down_proj")
            )
    if not specs:
        raise InvalidInputError(
            "cannot find the attention and MLP projections of this model; attributions support "
            "attnfast's built-in model, Llama-style models (self_attn.q_proj, ..., mlp.down_proj) "
            "and GPT-2 (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)"
        )
    get_embedding = getattr(model, "get_input_embeddings", None)
    embedding = get_embedding() if callable(get_embedding) else None
    if embedding is None and "embed" in names:
        embedding = names["embed"]
    embed_name = next((n for n, m in names.items() if m is embedding), None)
    if embed_name is None:
        raise InvalidInputError("cannot find the model's token embedding")
    return specs, embed_name


def sources_of(
    target: LayerSpec | None, specs: list[LayerSpec]
) -> list[tuple[LayerSpec | None, bool]]:
    """``[(source layer or None for wte, cross-position)]`` of a target (None: the logits)."""

    def writers_before(block: int, same: bool) -> list[tuple[LayerSpec | None, bool]]:
        return [(None, False)] + [
            (s, False)
            for s in specs
            if (s.part == "o_proj" and (s.block < block or (same and s.block == block)))
            or (s.part == "down_proj" and s.block < block)
        ]

    if target is None:
        return writers_before(1 << 30, True)
    if target.part in ("q_proj", "k_proj", "v_proj"):
        return writers_before(target.block, False)
    if target.part == "c_fc":
        return writers_before(target.block, True)
    if target.part == "o_proj":
        return [
            (s, s.part != "q_proj")
            for s in specs
            if s.block == target.block and s.part in ("q_proj", "k_proj", "v_proj")
        ]
    return [(s, False) for s in specs if s.block == target.block and s.part == "c_fc"]


@dataclass
class PromptAttribution:
    """What one prompt gives: the active components (``key -> (max_ci, positions)``), the
    importance of every channel, output probabilities, and the graph when asked for."""

    token_ids: list[int]
    active: dict[str, tuple[float, list[int]]]
    importance: dict[str, np.ndarray]
    output_probs: dict[str, float] = field(default_factory=dict)
    graph: AttributionGraph | None = None


class Attributor:
    """Computes a model's components and attributions for prompts (one at a time)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        ci_threshold: float = 1e-6,
        attr_threshold: float = 1e-4,
        importance: Importance | None = None,
        batch_size: int = 256,
        values: str = "float32",
    ) -> None:
        for name, v in (("ci_threshold", ci_threshold), ("attr_threshold", attr_threshold)):
            if not (isinstance(v, int | float) and np.isfinite(v) and v >= 0):
                raise InvalidInputError(f"{name} must be a finite number >= 0, got {v!r}")
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.specs, self.embed_name = find_layers(model)
        self.ci_threshold = float(ci_threshold)
        self.attr_threshold = float(attr_threshold)
        self.importance = importance or abs_importance
        self.batch_size = batch_size
        self.values = values
        self.layers = ["wte", *(s.name for s in self.specs), "output"]
        self._layer_index = {n: i for i, n in enumerate(self.layers)}
        self.device = next(model.parameters()).device

    @property
    def n_blocks(self) -> int:
        return 1 + max(s.block for s in self.specs)

    # One forward pass, recording the modules' outputs.
    def _forward(
        self, ids: torch.Tensor, grad: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        modules = dict(self.model.named_modules())
        outputs: dict[str, torch.Tensor] = {}
        hooks = []

        def record(name: str, is_embedding: bool) -> Any:
            def hook(_m: Any, _inp: Any, out: torch.Tensor) -> torch.Tensor:
                if is_embedding and grad:
                    out = out.detach().requires_grad_(True)
                outputs[name] = out
                return out

            return hook

        hooks.append(modules[self.embed_name].register_forward_hook(record(self.embed_name, True)))
        for m in {s.module for s in self.specs}:
            hooks.append(modules[m].register_forward_hook(record(m, False)))
        try:
            with torch.set_grad_enabled(grad):
                out = self.model(ids)
        finally:
            for h in hooks:
                h.remove()
        logits = out.logits if hasattr(out, "logits") else out[0]
        return outputs, logits

    def _channels(self, outputs: dict[str, torch.Tensor], spec: LayerSpec) -> torch.Tensor:
        return outputs[spec.module][..., spec.start : spec.stop]

    def run(self, token_ids: list[int], *, graph: bool = True) -> PromptAttribution:
        if not token_ids:
            raise InvalidInputError("a prompt needs at least one token")
        ids = torch.tensor([token_ids], device=self.device)
        with torch.no_grad():
            outputs, logits = self._forward(ids, grad=False)
        n = len(token_ids)
        importance: dict[str, np.ndarray] = {}
        active: dict[str, tuple[float, list[int]]] = {"wte:0": (1.0, list(range(n)))}
        masks: dict[str, np.ndarray] = {}
        for spec in self.specs:
            act = self._channels(outputs, spec)[0].float()
            imp = self.importance(spec.name, act)
            if tuple(imp.shape) != tuple(act.shape):
                raise InvalidInputError(
                    f"the importance of {spec.name} has shape {tuple(imp.shape)}, expected "
                    f"{tuple(act.shape)}"
                )
            imp_np = imp.detach().cpu().numpy().astype(np.float32)
            importance[spec.name] = imp_np
            mask = imp_np >= self.ci_threshold
            masks[spec.name] = mask
            # Per active channel: its largest importance and its positions, in one pass.
            cols = np.flatnonzero(mask.any(axis=0))
            if not len(cols):
                continue  # np.split of nothing still yields one piece
            top = np.where(mask, imp_np, -np.inf).max(axis=0)[cols]
            rows, pos = np.nonzero(mask[:, cols].T)
            per = np.split(pos, np.cumsum(np.bincount(rows, minlength=len(cols)))[:-1])
            for c, m, p in zip(cols.tolist(), top.tolist(), per, strict=True):
                active[f"{spec.name}:{c}"] = (m, p.tolist())
        probs = torch.softmax(logits[0].float(), dim=-1).cpu().numpy()
        out_mask = probs >= OUTPUT_PROBABILITY
        output_probs: dict[str, float] = {}
        for t in np.flatnonzero(out_mask.any(axis=0)).tolist():
            pos = np.flatnonzero(out_mask[:, t])
            active[f"output:{t}"] = (float(probs[pos, t].max()), pos.tolist())
            for s in pos.tolist():
                output_probs[f"{s}:{t}"] = float(probs[s, t])
        result = PromptAttribution(list(token_ids), active, importance, output_probs)
        if graph:
            result.graph = self._graph(ids, masks, out_mask)
        return result

    def _graph(
        self, ids: torch.Tensor, masks: dict[str, np.ndarray], out_mask: np.ndarray
    ) -> AttributionGraph:
        n = ids.shape[1]
        # Targets: (layer spec index or -1 for the logits, position, channel).
        targets: list[tuple[int, int, int]] = []
        for li, spec in enumerate(self.specs):
            s_idx, c_idx = np.nonzero(masks[spec.name])
            targets.extend(zip([li] * len(s_idx), s_idx.tolist(), c_idx.tolist(), strict=True))
        s_idx, t_idx = np.nonzero(out_mask)
        targets.extend(zip([-1] * len(s_idx), s_idx.tolist(), t_idx.tolist(), strict=True))
        batch = min(self.batch_size, max(1, len(targets)))
        outputs, logits = self._forward(ids.expand(batch, n), grad=True)
        by_module = {s.module for s in self.specs}
        inputs = [outputs[self.embed_name], *(outputs[m] for m in sorted(by_module))]
        input_index = {self.embed_name: 0, **{m: i + 1 for i, m in enumerate(sorted(by_module))}}
        acts = {k: v[0].detach() for k, v in outputs.items()}
        pieces: list[
            np.ndarray
        ] = []  # rows of (src layer, s_in, c_in, tgt layer, s_out, c_out) + val
        values: list[np.ndarray] = []
        for start in range(0, len(targets), batch):
            chunk = targets[start : start + batch]
            grad_out: dict[str, torch.Tensor] = {}
            for b, (li, s, c) in enumerate(chunk):
                if li < 0:
                    g = grad_out.setdefault("logits", torch.zeros_like(logits))
                    g[b, s, c] = 1.0
                else:
                    spec = self.specs[li]
                    g = grad_out.setdefault(spec.module, torch.zeros_like(outputs[spec.module]))
                    g[b, s, spec.start + c] = 1.0
            outs = [logits if k == "logits" else outputs[k] for k in grad_out]
            grads = torch.autograd.grad(
                outs,
                inputs,
                grad_outputs=list(grad_out.values()),
                retain_graph=True,
                allow_unused=True,
            )
            self._edges(chunk, grads, input_index, acts, masks, pieces, values)
        del outputs, logits, inputs
        return self._assemble(pieces, values)

    def _edges(
        self,
        chunk: list[tuple[int, int, int]],
        grads: tuple[torch.Tensor | None, ...],
        input_index: dict[str, int],
        acts: dict[str, torch.Tensor],
        masks: dict[str, np.ndarray],
        pieces: list[np.ndarray],
        values: list[np.ndarray],
    ) -> None:
        # Targets of one layer share their sources: gather them together.
        by_layer: dict[int, list[int]] = {}
        for b, (li, _, _) in enumerate(chunk):
            by_layer.setdefault(li, []).append(b)
        out_layer = self._layer_index["output"]
        for li, bs in by_layer.items():
            target = None if li < 0 else self.specs[li]
            t_layer = out_layer if target is None else self._layer_index[target.name]
            # Index tensors live on the model's device; their numpy twins index the masks.
            s_np = np.array([chunk[b][1] for b in bs])
            b_idx = torch.tensor(bs, device=self.device)
            s_out = torch.from_numpy(s_np).to(self.device)
            c_out = np.array([chunk[b][2] for b in bs])
            for source, cross in sources_of(target, self.specs):
                g_all = grads[input_index[self.embed_name if source is None else source.module]]
                if g_all is None:
                    continue
                if source is None:
                    act = acts[self.embed_name].float()
                    val = (g_all[b_idx, s_out].float() * act[s_out]).sum(-1, keepdim=True)
                    s_layer, active = 0, None
                else:
                    g_all = g_all[..., source.start : source.stop]
                    act = acts[source.module][..., source.start : source.stop].float()
                    s_layer, active = self._layer_index[source.name], masks[source.name]
                    if cross:
                        val = g_all[b_idx].float() * act[None]  # (nb, S, C)
                        keep = (
                            torch.arange(act.shape[0], device=self.device)[None, :]
                            <= s_out[:, None]
                        )
                        val = val * keep[..., None]
                    else:
                        val = g_all[b_idx, s_out].float() * act[s_out]  # (nb, C)
                v = val.detach().cpu().numpy()
                if cross and active is not None:
                    ok = (np.abs(v) >= self.attr_threshold) & active[None, :, :] & (v != 0)
                    k, s_in, c_in = np.nonzero(ok)
                else:
                    ok = np.abs(v) >= self.attr_threshold
                    if active is not None:
                        ok &= active[s_np]
                    ok &= v != 0
                    k, c_in = np.nonzero(ok)
                    s_in = s_np[k]
                if len(k) == 0:
                    continue
                rows = np.stack(
                    [
                        np.full(len(k), s_layer),
                        s_in,
                        c_in,
                        np.full(len(k), t_layer),
                        s_np[k],
                        c_out[k],
                    ],
                    axis=1,
                ).astype(np.int64)
                pieces.append(rows)
                values.append(v[ok].astype(np.float32))

    def _assemble(self, pieces: list[np.ndarray], values: list[np.ndarray]) -> AttributionGraph:
        if not pieces:
            return AttributionGraph.from_columns(
                self.layers, [], [], [], [], [], [], values=self.values
            )
        rows = np.concatenate(pieces)
        val = np.concatenate(values)
        ends = np.concatenate([rows[:, 0:3], rows[:, 3:6]])
        nodes, inverse = np.unique(ends, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        m = len(rows)
        return AttributionGraph.from_columns(
            self.layers,
            nodes[:, 0],
            nodes[:, 1],
            nodes[:, 2],
            inverse[:m],
            inverse[m:],
            val,
            values=self.values,
        )
