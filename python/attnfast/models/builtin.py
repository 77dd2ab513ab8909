"""The built-in default model: :class:`TinyCausalLM` trained briefly and deterministically on
the corpus shipped in ``data/corpus.txt``, so that its attention has real structure (bracket
matching, copying, periodic patterns) rather than random noise.

Training takes well under a minute on two CPU cores and happens at first use. The weights are
cached under ``$ATTNFAST_CACHE_DIR`` (default ``~/.cache/attnfast``) in a file named by a hash
of the recipe (config, corpus, schedule, seed), so changing any of them trains a new model and
a stale file is never loaded. Weights are read with ``torch.load(weights_only=True)``: no
pickled code runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from attnfast.models.causal_lm import ByteTokenizer, CausalLMConfig, TinyCausalLM


@dataclass(frozen=True)
class Recipe:
    config: CausalLMConfig = field(default_factory=CausalLMConfig)
    steps: int = 800
    batch: int = 8
    window: int = 192
    learning_rate: float = 3e-3
    seed: int = 0

    def digest(self, corpus: bytes) -> str:
        spec = {
            "config": self.config.to_dict(),
            "steps": self.steps,
            "batch": self.batch,
            "window": self.window,
            "lr": self.learning_rate,
            "seed": self.seed,
            "corpus": hashlib.sha256(corpus).hexdigest(),
            # Bumped when training's numerics change (2: grouped-query SDPA without repeats).
            "format": 2,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


DEFAULT_RECIPE = Recipe()


def corpus_bytes() -> bytes:
    """The shipped training corpus."""
    return resources.files("attnfast.models").joinpath("data/corpus.txt").read_bytes()


def cache_dir() -> Path:
    return Path(os.environ.get("ATTNFAST_CACHE_DIR") or Path.home() / ".cache" / "attnfast")


def train(
    recipe: Recipe = DEFAULT_RECIPE, progress: Callable[[int, float], None] | None = None
) -> TinyCausalLM:
    """Trains a model from the recipe on the shipped corpus (deterministic for a given torch
    build and thread count). ``progress(step, loss)`` is called every few steps."""
    torch.manual_seed(recipe.seed)
    data = torch.tensor(list(corpus_bytes()), dtype=torch.long)
    model = TinyCausalLM(recipe.config)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, recipe.learning_rate, total_steps=recipe.steps
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    bos = torch.full((recipe.batch, 1), ByteTokenizer.bos_token_id, dtype=torch.long)
    model.train()
    for step in range(recipe.steps):
        starts = torch.randint(
            0, len(data) - recipe.window - 1, (recipe.batch,), generator=generator
        )
        windows = torch.stack([data[s : s + recipe.window + 1] for s in starts.tolist()])
        inputs = torch.cat([bos, windows[:, :-1]], dim=1)
        targets = torch.cat([windows[:, :1], windows[:, 1:]], dim=1)
        logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if progress is not None and (step % 10 == 0 or step == recipe.steps - 1):
            progress(step + 1, loss.item())
    model.eval()
    return model


def weights_path(recipe: Recipe = DEFAULT_RECIPE) -> Path:
    return cache_dir() / f"builtin-{recipe.digest(corpus_bytes())}.pt"


def load_builtin(
    recipe: Recipe = DEFAULT_RECIPE, progress: Callable[[int, float], None] | None = None
) -> TinyCausalLM:
    """The built-in model in eval mode: from the cache, or trained now and cached."""
    path = weights_path(recipe)
    model = TinyCausalLM(recipe.config)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model.eval()
    started = time.perf_counter()
    model = train(recipe, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so that a crash or a concurrent trainer never leaves half a file.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    model.trained_seconds = time.perf_counter() - started  # type: ignore[assignment]
    return model
