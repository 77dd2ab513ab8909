"""``attnfast attributions generate``: a database of prompts, their active components and
(optionally) their graphs, from a torch model. Worker processes write to one WAL database; a
rerun skips the prompts already stored (same token ids, same digest)."""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from attnfast.attributions.db import LocalAttrDB, prompt_digest
from attnfast.exceptions import AttnfastError, InvalidInputError, MissingFileError

#: Examples kept per component in the activation contexts.
EXAMPLES = 5
#: Tokens either side of an example in its context.
CONTEXT = 4


@dataclass(frozen=True)
class GenerateResult:
    output: Path
    stored: int
    skipped: int
    seconds: float
    graphs: bool

    @property
    def prompts_per_second(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0


def read_prompts(path: Path | None) -> list[str]:
    """Prompts of a file, one per line (blank lines skipped); without a file, the lines of the
    built-in model's corpus."""
    if path is None:
        text = resources.files("attnfast.models").joinpath("data/corpus.txt").read_text()
    else:
        if not path.is_file():
            raise MissingFileError(f"--prompts {path} does not exist")
        text = path.read_text(encoding="utf-8")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InvalidInputError(f"--prompts {path} holds no prompts (one per line)")
    return prompts


def check_device(device: str) -> None:
    """A torch device name that this machine has."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"--device {device!r} is not a torch device name") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"--device {device}: CUDA is not available on this machine")


def load_importance(spec: str | None) -> Callable[..., Any] | None:
    """``module:function`` of a user importance function, imported (workers import it again)."""
    if spec is None:
        return None
    module, _, name = spec.partition(":")
    if not module or not name:
        raise InvalidInputError(f"--importance must be 'module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise InvalidInputError(f"--importance {spec}: cannot import it ({e})") from None
    if not callable(fn):
        raise InvalidInputError(f"--importance {spec} is not callable")
    return fn  # type: ignore[no-any-return]


def _tokenize(
    tokenizer: Any, prompts: Sequence[str], n_ctx: int
) -> list[tuple[list[int], list[str]]]:
    from attnfast.models.loading import encode

    out = []
    for p in prompts:
        ids = [int(t) for t in encode(tokenizer, p)[0].tolist()][:n_ctx]
        if hasattr(tokenizer, "token_text"):
            labels = [tokenizer.token_text(t) for t in ids]
        else:
            labels = [tokenizer.decode([t]) for t in ids]
        out.append((ids, labels))
    return out


@dataclass(frozen=True)
class _Job:
    model: str
    output: str
    ci_threshold: float
    attr_threshold: float
    importance: str | None
    graphs: bool
    values: str
    threads: int
    device: str


def _work(job: _Job, prompts: list[tuple[list[int], list[str]]], done: Any) -> None:
    """One worker: its own model and connection; one transaction per prompt."""
    import torch

    from attnfast.attributions.compute import Attributor
    from attnfast.models.loading import load_model

    torch.set_num_threads(job.threads)
    model, _, _ = load_model(job.model)
    model.to(job.device)
    attributor = Attributor(
        model,
        ci_threshold=job.ci_threshold,
        attr_threshold=job.attr_threshold,
        importance=load_importance(job.importance),
        values=job.values,
    )
    _store_all(job, attributor, prompts, done.put)


def _store_all(
    job: _Job,
    attributor: Any,
    prompts: list[tuple[list[int], list[str]]],
    tick: Callable[[int], None],
) -> None:
    """Computes and stores each prompt, one transaction each; `tick(0)` for one another
    process stored meanwhile, `tick(1)` for one stored here."""
    with LocalAttrDB(job.output) as db:
        for ids, labels in prompts:
            digest = prompt_digest(ids, labels)
            if db.has_digest(digest):
                tick(0)
                continue
            r = attributor.run(ids, graph=job.graphs)
            db.add_prompt(
                labels,
                r.active,
                graph=r.graph,
                token_ids=ids,
                output_probs=r.output_probs,
                digest=digest,
                source=job.model,
            )
            tick(1)


def activation_contexts(
    attributor: Any, prompts: Sequence[tuple[list[int], list[str]]]
) -> dict[str, dict[str, Any]]:
    """Per component: mean importance over every token, and the top examples (token, its
    context, importance, prompt index and position), as the seed's meta keeps them."""
    sums: dict[str, np.ndarray] = {}
    best: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tokens = 0
    for p, (ids, _) in enumerate(prompts):
        r = attributor.run(ids, graph=False)
        tokens += len(ids)
        for layer, imp in r.importance.items():
            sums[layer] = sums.get(layer, 0) + imp.sum(axis=0)
            # Candidates: this prompt's positions, then the best so far; keep the top EXAMPLES.
            refs = np.stack([np.full(len(ids), p), np.arange(len(ids))], axis=1)
            val = imp
            if layer in best:
                old_val, old_ref = best[layer]
                val = np.concatenate([old_val, imp])
                refs_c = np.concatenate(
                    [old_ref, np.repeat(refs[:, None, :], imp.shape[1], axis=1)]
                )
            else:
                refs_c = np.repeat(refs[:, None, :], imp.shape[1], axis=1)
            k = min(EXAMPLES, val.shape[0])
            top = np.argsort(-val, axis=0, kind="stable")[:k]
            cols = np.arange(val.shape[1])
            best[layer] = (val[top, cols], refs_c[top, cols])
    out: dict[str, dict[str, Any]] = {}
    for layer, total in sums.items():
        val, ref = best[layer]
        for c in range(total.shape[0]):
            examples = []
            for j in range(val.shape[0]):
                p, s = (int(x) for x in ref[j, c])
                labels = prompts[p][1]
                examples.append(
                    (
                        labels[s],
                        "".join(labels[max(0, s - CONTEXT) : s + CONTEXT + 1]),
                        float(val[j, c]),
                        p,
                        s,
                    )
                )
            out[f"{layer}:{c}"] = {
                "mean_ci": float(total[c] / max(tokens, 1)),
                "example_tokens": [e[0] for e in examples],
                "example_contexts": [e[1] for e in examples],
                "example_ci": [e[2] for e in examples],
                "example_active_pos": [e[4] for e in examples],
            }
    return out


def generate(
    model: str = "builtin",
    output: str | os.PathLike[str] = "attributions.db",
    *,
    prompts: Sequence[str] | None = None,
    prompts_file: Path | None = None,
    n_prompts: int | None = None,
    n_workers: int = 1,
    n_ctx: int = 64,
    ci_threshold: float = 1e-6,
    attr_threshold: float = 1e-4,
    store_graphs: bool = True,
    importance: str | None = None,
    values: str = "float32",
    device: str = "cpu",
    progress: bool = False,
) -> GenerateResult:
    """Generates (or resumes) an attributions database. ``store_graphs=False`` is seed 002's
    on-demand form: token ids, active components and the index only."""
    import torch

    from attnfast.attributions.compute import Attributor
    from attnfast.models.loading import load_model

    for name, v, low in (("n_workers", n_workers, 1), ("n_ctx", n_ctx, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {v!r}")
    if n_prompts is not None and (isinstance(n_prompts, bool) or n_prompts < 1):
        raise InvalidInputError(f"n_prompts must be >= 1, got {n_prompts!r}")
    texts = list(prompts) if prompts is not None else read_prompts(prompts_file)
    if n_prompts is not None:
        texts = texts[:n_prompts]
    load_importance(importance)
    check_device(device)
    output = Path(output)
    started = time.perf_counter()
    net, tokenizer, name = load_model(model)
    net.to(device)
    attributor = Attributor(
        net,
        ci_threshold=ci_threshold,
        attr_threshold=attr_threshold,
        importance=load_importance(importance),
        values=values,
    )
    tokenized = _tokenize(tokenizer, texts, n_ctx)
    with LocalAttrDB(output) as db:
        stored = db.stored_digests()
        pending = []
        for t in tokenized:  # prompts stored before, or repeated once cut to n_ctx, are skipped
            d = prompt_digest(*t)
            if d not in stored:
                stored.add(d)
                pending.append(t)
        skipped = len(tokenized) - len(pending)
        if db.get_activation_contexts() is None:
            db.set_activation_contexts(activation_contexts(attributor, tokenized))
        if db.get_meta("n_blocks") is None:
            db.set_meta("n_blocks", {"n_blocks": attributor.n_blocks})
            db.set_meta("wandb_path", {"path": model})
            db.set_meta("model", {"name": name, "spec": model, "layers": attributor.layers})
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    job = _Job(
        str(model),
        str(output),
        ci_threshold,
        attr_threshold,
        importance,
        store_graphs,
        values,
        threads,
        device,
    )
    bar = _Progress(len(pending), progress)
    try:
        if n_workers == 1 or len(pending) <= 1:
            torch.set_num_threads(threads)
            _work_here(job, attributor, pending, bar)
        else:
            _work_spawned(job, pending, n_workers, bar)
    finally:
        bar.close()
    with LocalAttrDB(output) as db:  # the index persisted, so the first search needs no rebuild
        db.save_index()
    return GenerateResult(output, bar.stored, skipped, time.perf_counter() - started, store_graphs)


def _work_here(
    job: _Job, attributor: Any, pending: list[tuple[list[int], list[str]]], bar: _Progress
) -> None:
    _store_all(job, attributor, pending, bar.tick)


def _work_spawned(
    job: _Job, pending: list[tuple[list[int], list[str]]], n_workers: int, bar: _Progress
) -> None:
    ctx = mp.get_context("spawn")
    done = ctx.Queue()
    shares = [pending[i::n_workers] for i in range(n_workers)]
    workers = [ctx.Process(target=_work, args=(job, s, done), daemon=True) for s in shares if s]
    for w in workers:
        w.start()
    try:
        remaining = len(pending)
        while remaining:
            try:
                n = done.get(timeout=1.0)
            except Exception:
                dead = [w for w in workers if w.exitcode not in (None, 0)]
                if dead:
                    raise AttnfastError(
                        f"a generation worker failed (exit status {dead[0].exitcode}); what was "
                        "stored is kept, rerun to resume"
                    ) from None
                if all(w.exitcode == 0 for w in workers):
                    break
                continue
            remaining -= 1
            bar.tick(n)
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.terminate()


class _Progress:
    """A rich bar with prompts/s on a terminal; counting only elsewhere."""

    def __init__(self, total: int, show: bool) -> None:
        self.stored = 0
        self.progress: Any = None
        if show and total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("attributions"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.task = self.progress.add_task("prompts", total=total, rate="")
            self.started = time.perf_counter()
            self.progress.start()

    def tick(self, n: int) -> None:
        self.stored += n
        if self.progress is not None:
            rate = self.stored / max(time.perf_counter() - self.started, 1e-9)
            self.progress.update(self.task, advance=1, rate=f"{rate:.2f} prompts/s")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
