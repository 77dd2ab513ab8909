"""Finding a model's attention layers and attaching to them, without changing how they run.

Three kinds of layer are known:
- Hugging Face transformers attention modules (anything with ``layer_idx`` under a
  ``PreTrainedModel``). Under SDPA, flash or flex attention the library calls an attention
  function from its ``AttentionInterface`` registry with the post-RoPE queries and the cached
  keys; attnfast swaps in a wrapper that shows them to the capture and then calls the original
  kernel. Under eager attention the module returns its weights, and a forward hook reads them.
- ``torch.nn.MultiheadAttention``: a forward hook recomputes the queries and keys from the
  module's own projection weights (its fused kernel never exposes them).
- attnfast's reference :class:`~attnfast.models.MultiHeadAttention`, which calls an observer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnfast.exceptions import CaptureError
from attnfast.models.attention import MultiHeadAttention as ReferenceAttention

# observer(module, query (B,H,Q,D), key (B,Hkv,n,D), mask, scaling, is_causal)
Observer = Callable[..., None]


@dataclass
class Target:
    layer: int
    module: nn.Module
    kind: str  # "hf", "hf-eager", "torch-mha", "reference"


def find_targets(model: nn.Module) -> list[Target]:
    """The attention layers of ``model`` in layer order."""
    if isinstance(model, nn.MultiheadAttention):
        return [Target(0, model, "torch-mha")]
    if isinstance(model, ReferenceAttention):
        return [Target(0, model, "reference")]
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    found: list[Target] = []
    for module in model.modules():
        if isinstance(module, ReferenceAttention):
            found.append(Target(len(found), module, "reference"))
        elif isinstance(module, nn.MultiheadAttention):
            found.append(Target(len(found), module, "torch-mha"))
        elif impl is not None and _is_hf_attention(module):
            kind = "hf-eager" if impl == "eager" else "hf"
            found.append(Target(len(found), module, kind))
    if not found:
        raise CaptureError(
            f"found no attention layers in {type(model).__name__}: attnfast captures Hugging "
            "Face transformers models, torch.nn.MultiheadAttention and attnfast.models"
        )
    return found


def _is_hf_attention(module: nn.Module) -> bool:
    """The innermost attention module of a Hugging Face layer: the one that calls the
    attention function (``BertAttention`` wraps ``BertSelfAttention``; only the latter
    counts). Cross-attention is left out: its keys are not the sequence's own."""

    def candidate(m: nn.Module) -> bool:
        return "Attention" in type(m).__name__ and (
            hasattr(m, "layer_idx") or hasattr(m, "scaling") or hasattr(m, "attention_head_size")
        )

    if not candidate(module) or getattr(module, "is_cross_attention", False):
        return False
    return not any(candidate(m) for m in module.modules() if m is not module)


# --- Hugging Face registry wrapper -------------------------------------------------------
# One wrapper per attention implementation, shared by every active capture and dispatching by
# module identity, so that nested or concurrent captures on different models work and a
# module that is not captured pays one dict lookup.

_lock = threading.Lock()
_observers: dict[int, Observer] = {}
_installed: dict[str, Callable[..., Any]] = {}


def _registry() -> Any:
    from transformers.modeling_utils import AttentionInterface

    return AttentionInterface._global_mapping


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(
        module: nn.Module,
        query: Any,
        key: Any,
        value: Any,
        attention_mask: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        observer = _observers.get(id(module))
        if observer is not None:
            if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
                raise CaptureError(
                    f"{type(module).__name__} uses attention logit soft-capping or sink logits, "
                    "which attnfast's row recomputation does not model yet; load the model with "
                    "attn_implementation='eager' to capture it"
                )
            is_causal = kwargs.get("is_causal")
            if is_causal is None:
                is_causal = getattr(module, "is_causal", True)
            observer(module, query, key, attention_mask, kwargs.get("scaling"), bool(is_causal))
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    return wrapper


def attach_hf(module: nn.Module, observer: Observer, implementation: str) -> Callable[[], None]:
    """Routes ``module``'s calls of the ``implementation`` attention function through
    ``observer``; returns the undo."""
    with _lock:
        registry = _registry()
        if implementation not in registry:
            raise CaptureError(f"unknown attention implementation {implementation!r}")
        if implementation not in _installed:
            _installed[implementation] = registry[implementation]
            registry[implementation] = _wrap(registry[implementation])
        _observers[id(module)] = observer

    def undo() -> None:
        with _lock:
            _observers.pop(id(module), None)
            if not _observers:
                registry = _registry()
                for name, original in _installed.items():
                    registry[name] = original
                _installed.clear()

    return undo


# --- torch.nn.MultiheadAttention -------------------------------------------------------


def mha_observer_hook(module: nn.MultiheadAttention, observer: Observer) -> Callable[[], None]:
    """A forward hook that recomputes ``module``'s queries and keys from its inputs."""

    def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        assert isinstance(mod, nn.MultiheadAttention)
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        if not mod.batch_first and query.dim() == 3:
            query, key = query.transpose(0, 1), key.transpose(0, 1)
        if query.dim() == 2:
            query, key = query.unsqueeze(0), key.unsqueeze(0)
        e, h = mod.embed_dim, mod.num_heads
        if mod._qkv_same_embed_dim:
            w_q, w_k = mod.in_proj_weight[:e], mod.in_proj_weight[e : 2 * e]
        else:
            w_q, w_k = mod.q_proj_weight, mod.k_proj_weight
        b_q = b_k = None
        if mod.in_proj_bias is not None:
            b_q, b_k = mod.in_proj_bias[:e], mod.in_proj_bias[e : 2 * e]
        with torch.no_grad():
            q = torch.nn.functional.linear(query, w_q, b_q)
            k = torch.nn.functional.linear(key, w_k, b_k)
            if mod.bias_k is not None:
                k = torch.cat([k, mod.bias_k.expand(k.shape[0], 1, e)], dim=1)
            bsz, q_len, n = q.shape[0], q.shape[1], k.shape[1]
            q = q.view(bsz, q_len, h, e // h).transpose(1, 2)
            k = k.view(bsz, n, h, e // h).transpose(1, 2)
            mask = _mha_mask(kwargs, args, bsz, h, q_len, n)
            observer(mod, q, k, mask, None, bool(kwargs.get("is_causal", False)))

    handle = module.register_forward_hook(hook, with_kwargs=True)
    return handle.remove


def _mha_mask(
    kwargs: dict[str, Any], args: tuple[Any, ...], bsz: int, h: int, q_len: int, n: int
) -> torch.Tensor | None:
    """nn.MultiheadAttention's masks (True or -inf = masked) as one additive float mask."""
    key_padding_mask = kwargs.get("key_padding_mask", args[3] if len(args) > 3 else None)
    attn_mask = kwargs.get("attn_mask", args[5] if len(args) > 5 else None)
    out = None
    for m, shape in ((attn_mask, None), (key_padding_mask, (bsz, 1, 1, n))):
        if m is None:
            continue
        add = (
            torch.zeros(m.shape, device=m.device).masked_fill(m, float("-inf"))
            if m.dtype == torch.bool
            else m.float()
        )
        if shape is not None:
            add = add.view(shape)
        elif add.dim() == 3:
            add = add.view(bsz, h, q_len, -1)
        out = add if out is None else out + add
    return out


def shadow(
    model: nn.Module, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Callable[[], None]:
    """Shadows ``model.<name>`` with an instance attribute wrapping it (the class's method, or
    an instance attribute already there, as accelerate's hooks leave); returns the undo."""
    had = name in model.__dict__
    before = model.__dict__.get(name)
    object.__setattr__(model, name, wrap(getattr(model, name)))

    def undo() -> None:
        if had:
            object.__setattr__(model, name, before)
        else:
            object.__delattr__(model, name)

    return undo


def set_observer(module: nn.Module, observer: Callable[..., None]) -> Callable[[], None]:
    """Hands a reference-model layer its observer; returns the undo."""
    setattr(module, "capture_observer", observer)  # noqa: B010
    return lambda: setattr(module, "capture_observer", None)
