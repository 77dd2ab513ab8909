"""``attnfast capture | heatmap | prune-sim | replay-eviction | convert``: capturing attention
during generation and analysing full captures."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from attnfast._files import existing_file
from attnfast.cli._app import (
    Overwrite,
    app,
    console,
    err_console,
    new_output,
    removed_on_failure,
    user_errors,
    warn,
)
from attnfast.exceptions import InvalidInputError

DEFAULT_PROMPT = (
    "Please analyze the following data. First, consider the primary factors: X, Y, and Z. "
    "By the way, it's a nice day today. Finally, summarize your findings."
)
ModelOpt = Annotated[
    str, typer.Option("--model", help="'builtin' or a local Hugging Face model directory.")
]


class Mode(StrEnum):
    fingerprint = "fingerprint"
    topk = "topk"
    full = "full"


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError(f"{what} must be comma-separated integers, got {text!r}") from None


def _prompts(prompt: str | None, prompts: Path | None) -> list[str]:
    if (prompt is None) == (prompts is None):
        raise InvalidInputError("give exactly one of --prompt TEXT and --prompts FILE")
    if prompt is not None:
        if not prompt:
            raise InvalidInputError("--prompt is empty")
        return [prompt]
    assert prompts is not None
    out = []
    text = existing_file(prompts).read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                out.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InvalidInputError(f'{prompts}:{n}: a JSON line needs a "prompt"') from e
        else:
            out.append(line)
    if not out:
        raise InvalidInputError(f"{prompts} holds no prompts")
    return out


def open_capture(path: Path) -> Any:
    """A capture file, warning (one line each) about the chunks found damaged: their steps
    are missing, and a command that needs one of them fails naming its chunk."""
    from attnfast.capture_file import CaptureFile

    f = CaptureFile(path)
    if not f.indexed:
        warn(f"{path} has no index (its writer did not close it): read by scanning its chunks")
    for chunk, offset, message in f.problems:
        detail = message.rsplit("is damaged: ", 1)[-1]
        warn(f"{path}: chunk {chunk} (byte {offset}) is damaged ({detail}); its steps are skipped")
    return f


def _training_progress() -> Any:
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    state: dict[str, Any] = {}

    def report(step: int, loss: float) -> None:
        from attnfast.models.builtin import DEFAULT_RECIPE

        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task(
                "training the built-in model (first use only)", total=DEFAULT_RECIPE.steps
            )
        bar.update(
            state["task"],
            completed=step,
            description=f"training the built-in model (loss {loss:.2f})",
        )
        if step >= DEFAULT_RECIPE.steps:
            bar.stop()

    return report


@app.command()
def capture(
    out: Annotated[
        Path, typer.Option("--out", help="A .attn file (--mode full) or a fingerprint database.")
    ],
    model: ModelOpt = "builtin",
    prompt: Annotated[str | None, typer.Option("--prompt", help="One prompt.")] = None,
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="A file of prompts, one per line (or JSONL with 'prompt')."),
    ] = None,
    mode: Annotated[Mode, typer.Option("--mode")] = Mode.fingerprint,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
    layers: Annotated[
        str | None, typer.Option("--layers", help="Layer indices, e.g. 0,2,3 (default all).")
    ] = None,
    heads: Annotated[
        str | None, typer.Option("--heads", help="Head indices (default all).")
    ] = None,
    every_n: Annotated[int, typer.Option("--every-n", min=1, help="Keep every n-th step.")] = 1,
    topk: Annotated[int, typer.Option("--topk", min=1)] = 16,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing .attn --out.")
    ] = False,
) -> None:
    """Generate from prompts and capture the model's attention at every step.

    A .attn --out is a new file (or --overwrite); a database --out gains the new requests."""
    from attnfast.models.loading import load_model

    with user_errors():
        texts = _prompts(prompt, prompts)
        if mode is Mode.full and out.suffix != ".attn":
            raise InvalidInputError(
                f"--mode full writes a capture file: --out must end in .attn, got {out}"
            )
        if mode is not Mode.full and out.suffix == ".attn":
            raise InvalidInputError(
                f"--mode {mode.value} writes fingerprints to a database, not a .attn file: "
                "use --mode full or a .db path"
            )
        if mode is Mode.full:
            new_output(out, overwrite)
        options = dict(
            mode=mode.value,
            layers=_ints(layers, "--layers"),
            heads=_ints(heads, "--heads"),
            every_n=every_n,
            topk=topk,
        )
        net, tokenizer, name = load_model(model, progress=_training_progress())
        with removed_on_failure(out):
            _capture(net, tokenizer, name, texts, out, options, max_new_tokens, temperature, seed)


def _capture(
    net: Any,
    tokenizer: Any,
    name: str,
    texts: list[str],
    out: Path,
    options: dict[str, Any],
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> None:
    from attnfast.hooks import capture as capture_ctx
    from attnfast.models.loading import encode, generate
    from attnfast.store import FingerprintStore

    mode = options["mode"]
    store = None if mode == "full" else FingerprintStore(out)
    sink: Any = str(out) if store is None else store
    try:
        # Prompt i is request "<out stem>" (i = 0) or "<out stem>#i".
        with capture_ctx(
            net, sink=sink, request_id=out.stem, tokenizer=tokenizer, model_id=name, **options
        ) as cap:
            for i, text in enumerate(texts):
                ids = encode(tokenizer, text)
                generated = generate(net, ids, max_new_tokens, temperature, seed)
                said = tokenizer.decode(generated[0, ids.shape[1] :].tolist())
                console.print(f"[bold]{i}[/bold] {escape(text[:60])} -> {escape(said)!r}")
    finally:
        if store is not None:
            store.close()
    console.print(
        f"captured {cap.steps_captured} steps of {len(texts)} prompt(s) ({mode}) into {out}"
    )
    written = cap.written
    if written is not None:
        console.print(f"{out}: {written.summary()}", soft_wrap=True)
        if written.duplicates:
            warn(
                f"{out} held these requests already ({written.duplicate_rows[0][0]!r}, ...): "
                "the stored rows were kept; capture into another file, or delete them first"
            )


@app.command()
def heatmap(
    capture_path: Annotated[Path, typer.Argument(metavar="CAPTURE", help="A .attn capture file.")],
    out: Annotated[Path, typer.Option("--out", help="The image to write: .png, .svg or .pdf.")],
    by: Annotated[
        str, typer.Option("--by", help="'position' (step x prompt position) or 'sentence'.")
    ] = "position",
    sequence: Annotated[int, typer.Option("--sequence", min=0)] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Draw generation step x prompt position (or sentence) attention as an image."""
    from attnfast.analysis import prompt_attention, save_heatmap, sentence_attention
    from attnfast.analysis.heatmap import FORMATS

    with user_errors():
        if out.suffix.lower() not in FORMATS:
            raise InvalidInputError(f"--out {out}: write a heatmap as {', '.join(FORMATS)}")
        if by not in ("position", "sentence"):
            raise InvalidInputError(f"--by must be 'position' or 'sentence', got {by!r}")
        new_output(out, overwrite)
        f = open_capture(capture_path)
        with removed_on_failure(out):
            if by == "position":
                _, matrix = prompt_attention(f, sequence)
                save_heatmap(
                    matrix.T,
                    out,
                    title=f"{capture_path.name}: attention to the prompt",
                    xlabel="generation step",
                    ylabel="prompt position",
                )
            else:
                s = sentence_attention(f, sequence)
                save_heatmap(
                    s.matrix.T,
                    out,
                    title=f"{capture_path.name}: attention per sentence",
                    xlabel="generation step",
                    ylabel="sentence",
                    yticklabels=s.sentences,
                )
        console.print(f"wrote {out}")


@app.command("prune-sim")
def prune_sim(
    model: ModelOpt = "builtin",
    prompt: Annotated[str, typer.Option("--prompt")] = DEFAULT_PROMPT,
    drop: Annotated[
        float,
        typer.Option(
            "--drop",
            help="Fraction of prompt tokens to drop, by lowest peak attention (0 to below 1).",
            min=0.0,
            max=0.99,
        ),
    ] = 0.3,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 32,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Drop the least-attended prompt tokens, generate again, and compare the outputs."""
    from attnfast.analysis.pruning import prune_simulation
    from attnfast.models.loading import encode, load_model

    with user_errors():
        if not prompt:
            raise InvalidInputError("--prompt is empty")
        net, tokenizer, _ = load_model(model, progress=_training_progress())
        r = prune_simulation(
            net, encode(tokenizer, prompt), drop_fraction=drop, max_new_tokens=max_new_tokens
        )
        summary = r.summary()
        if as_json:
            console.print_json(json.dumps(summary))
            return
        console.print(f"dropped {len(r.dropped_positions)} of {r.prompt_tokens} prompt tokens")
        console.print(f"original: {tokenizer.decode(r.original)!r}")
        console.print(f"pruned:   {tokenizer.decode(r.pruned)!r}")
        where = "never" if r.first_divergence is None else f"at step {r.first_divergence}"
        console.print(f"token agreement {r.agreement:.1%}; outputs diverge {where}")


@app.command("replay-eviction")
def replay_eviction_cmd(
    capture_path: Annotated[Path, typer.Argument(metavar="CAPTURE", help="A .attn capture file.")],
    budget: Annotated[int, typer.Option("--budget", min=1, help="KV cache size in tokens.")],
    policy: Annotated[
        str, typer.Option("--policy", help="all, or a comma list of streaming,h2o,snapkv,tova.")
    ] = "all",
    sinks: Annotated[int, typer.Option("--sinks", min=0)] = 4,
    window: Annotated[int | None, typer.Option("--window", min=1)] = None,
    sequence: Annotated[int, typer.Option("--sequence", min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Per-step kept shares as JSON.")] = False,
) -> None:
    """Replay KV-cache eviction policies on a capture: the attention share each would keep."""
    from attnfast.analysis import POLICIES, replay_eviction

    with user_errors():
        names = list(POLICIES) if policy == "all" else [p.strip() for p in policy.split(",")]
        unknown = [p for p in names if p not in POLICIES]
        if unknown:
            raise InvalidInputError(
                f"--policy {', '.join(unknown)}: policies are all, {', '.join(POLICIES)}"
            )
        f = open_capture(capture_path)
        results = [
            replay_eviction(f, p, budget, sequence=sequence, sinks=sinks, window=window)
            for p in names
        ]
        if as_json:
            console.print_json(
                json.dumps(
                    [
                        {**r.summary(), "kept_share": np.round(r.kept_share, 6).tolist()}
                        for r in results
                    ]
                )
            )
            return
        table = Table(title=f"{capture_path.name}: attention kept at a budget of {budget} tokens")
        for c in ("policy", "steps", "mean kept", "min kept", "final kept"):
            table.add_column(c, justify="right" if c != "policy" else "left")
        for r in results:
            s = r.summary()
            table.add_row(
                str(s["policy"]),
                str(s["steps"]),
                f"{s['mean_kept']:.1%}",
                f"{s['min_kept']:.1%}",
                f"{s['final_kept']:.1%}",
            )
        console.print(table)


class Target(StrEnum):
    json = "json"
    attn = "attn"


@app.command()
def convert(
    source: Annotated[
        Path, typer.Argument(help="A .attn file, or a seed JSON capture (.json or .json.gz).")
    ],
    to: Annotated[Target, typer.Option("--to")],
    out: Annotated[Path, typer.Option("--out")],
    sequence: Annotated[
        int, typer.Option("--sequence", min=0, help="Which sequence to export to JSON.")
    ] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Convert between the binary capture format and the seed's JSON."""
    from attnfast.capture_file import CaptureFile

    with user_errors():
        existing_file(source)
        if out.exists() and out.resolve() == source.resolve():
            raise InvalidInputError("--out must differ from the source")
        new_output(out, overwrite)
        with removed_on_failure(out):
            if to is Target.json:
                f = open_capture(source)
                if sequence >= max(1, len(f.sequences)):
                    raise InvalidInputError(
                        f"{source} has {len(f.sequences)} sequence(s): no --sequence {sequence}"
                    )
                f.to_json(out, sequence=sequence)
            else:
                CaptureFile.from_json(source, out)
        console.print(f"wrote {out} ({out.stat().st_size:,} bytes, from {source.stat().st_size:,})")
