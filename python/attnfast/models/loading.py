"""Loading the model a command runs: the built-in one, or a local Hugging Face directory."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attnfast.exceptions import CaptureError


def load_model(
    spec: str, progress: Callable[[int, float], None] | None = None
) -> tuple[torch.nn.Module, Any, str]:
    """``(model, tokenizer, name)`` for ``"builtin"`` or a local Hugging Face model directory
    (loaded with SDPA attention; nothing is downloaded)."""
    if spec == "builtin":
        from attnfast.models.builtin import load_builtin
        from attnfast.models.causal_lm import ByteTokenizer

        return load_builtin(progress=progress), ByteTokenizer(), "attnfast-builtin"
    path = Path(spec)
    if not path.is_dir():
        raise CaptureError(
            f"--model must be 'builtin' or a local Hugging Face model directory; {spec} is not a "
            "directory (attnfast never downloads models)"
        )
    if not (path / "config.json").is_file():
        raise CaptureError(
            f"{spec} is not a Hugging Face model directory (it has no config.json); attnfast "
            "loads local models only"
        )
    try:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - transformers is optional
        raise CaptureError("loading a Hugging Face model needs `pip install transformers`") from e
    if not sys.stderr.isatty():  # no progress bars in logs and pipes
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, attn_implementation="sdpa", local_files_only=True
        )
    except (OSError, ValueError, KeyError) as e:
        raise CaptureError(f"cannot load the model in {spec}: {e}") from None
    model.eval()  # type: ignore[no-untyped-call]
    return model, tokenizer, path.name


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    """``(1, S)`` token ids of a prompt."""
    if hasattr(tokenizer, "token_text"):  # the byte tokenizer
        return torch.tensor([tokenizer.encode(text)])
    ids: torch.Tensor = tokenizer(text, return_tensors="pt")["input_ids"]
    return ids


def generate(
    model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float, seed: int
) -> torch.Tensor:
    """Greedy (temperature 0) or sampled generation on either kind of model."""
    from attnfast.models.causal_lm import TinyCausalLM

    if isinstance(model, TinyCausalLM):
        return model.generate(ids, max_new_tokens, temperature=temperature, seed=seed)
    torch.manual_seed(seed)
    out: torch.Tensor = model.generate(  # type: ignore[operator]
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=None,
        top_k=None,
    )
    return out
