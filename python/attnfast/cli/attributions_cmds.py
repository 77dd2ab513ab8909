"""``attnfast attributions ...``: generate, import, export, search and merge attribution
databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from attnfast.attributions import LocalAttrDB
from attnfast.cli._app import (
    app,
    companions,
    console,
    err_console,
    new_output,
    removed_on_failure,
    user_errors,
    warn,
)

attributions = typer.Typer(
    name="attributions",
    help="Attribution graphs between model components: generate, import, search, export.",
    no_args_is_help=True,
)
app.add_typer(attributions)

Db = Annotated[Path, typer.Option("--db", help="Attributions database (SQLite).")]


class Format(StrEnum):
    table = "table"
    json = "json"


class Mode(StrEnum):
    all = "all"
    any = "any"


class Values(StrEnum):
    float32 = "float32"
    float16 = "float16"


def _open(db: Path) -> LocalAttrDB:
    """An existing database: reading commands never create one."""
    return LocalAttrDB(db, create=False)


@attributions.command()
def generate(
    output: Annotated[Path, typer.Option("--output", help="Database to create or resume.")],
    model: Annotated[
        str, typer.Option(help="'builtin' or a local Hugging Face model folder.")
    ] = "builtin",
    prompts: Annotated[
        Path | None, typer.Option(help="Prompts, one per line (default: the built-in corpus).")
    ] = None,
    n_prompts: Annotated[int | None, typer.Option(help="Use the first N prompts.")] = None,
    n_workers: Annotated[int, typer.Option(help="Worker processes writing the database.")] = 1,
    n_ctx: Annotated[int, typer.Option(help="Tokens per prompt (longer ones are cut).")] = 64,
    ci_threshold: Annotated[
        float, typer.Option(help="Importance at which a component is active.")
    ] = 1e-6,
    attr_threshold: Annotated[
        float, typer.Option(help="Smallest |attribution| kept as an edge.")
    ] = 1e-4,
    store_graphs: Annotated[
        bool,
        typer.Option(
            "--store-graphs/--on-demand", help="Store graphs, or only the index (seed 002)."
        ),
    ] = True,
    importance: Annotated[
        str | None, typer.Option(help="module:function giving importance (default |activation|).")
    ] = None,
    values: Annotated[
        Values, typer.Option(help="Edge values: float32 or float16.")
    ] = Values.float32,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1 ...")] = "cpu",
) -> None:
    """Generate (or resume) an attributions database from a torch model: active components
    per prompt, the index, activation contexts, and graphs (gradient x activation)."""
    from attnfast.attributions.generate import generate as run

    with user_errors(), _kept_if_started(output):
        if output.is_dir():
            raise ValueError(f"--output {output} is a folder; name a database file")
        r = run(
            model,
            output,
            prompts_file=prompts,
            n_prompts=n_prompts,
            n_workers=n_workers,
            n_ctx=n_ctx,
            ci_threshold=ci_threshold,
            attr_threshold=attr_threshold,
            store_graphs=store_graphs,
            importance=importance,
            values=values.value,
            device=device,
            progress=err_console.is_terminal,
        )
    console.print(
        f"{output}: stored {r.stored} prompts ({r.skipped} already stored, skipped) in "
        f"{r.seconds:.1f}s, {r.prompts_per_second:.2f} prompts/s; graphs "
        f"{'stored' if r.graphs else 'on demand'}"
    )


@contextmanager
def _kept_if_started(output: Path) -> Iterator[None]:
    """A new database is removed if generation fails before storing a prompt; once prompts are
    stored (an interrupted run, a worker that failed late) it is kept, to resume."""
    new = [p for p in companions(output) if not p.exists()]
    try:
        yield
    except BaseException:
        stored = _stored(output) if output.is_file() else 0
        if stored:
            warn(f"{output} keeps the {stored} prompts stored; run the same command to resume")
        else:
            for p in new:
                p.unlink(missing_ok=True)
        raise


def _stored(db: Path) -> int:
    try:
        with LocalAttrDB(db, create=False, readonly=True) as store:
            return store.get_prompt_count()
    except Exception:
        return 0


@attributions.command("import-graphs")
def import_graphs(
    db: Db,
    files: Annotated[list[Path], typer.Argument(help="circuit-tracer graph JSON files.")],
    values: Annotated[
        Values, typer.Option(help="Edge values: float32 or float16.")
    ] = Values.float32,
) -> None:
    """Import circuit-tracer / Neuronpedia graph JSON files, one prompt per graph."""
    from attnfast.attributions.circuit_tracer import import_graph, read_graph

    with user_errors():
        for f in files:  # every file checked before the database is touched
            read_graph(f)
        with removed_on_failure(db), LocalAttrDB(db) as store:
            ids = [import_graph(store, f, values=values.value) for f in files]
    for f, pid in zip(files, ids, strict=True):
        console.print(f"{escape(str(f))} -> prompt {pid}")


@attributions.command()
def export(
    db: Db,
    prompt: Annotated[int, typer.Option("--prompt", help="Prompt id.")],
    out: Annotated[Path, typer.Option("--out", help="Graph JSON file to write.")],
    format: Annotated[
        str, typer.Option(help="circuit-tracer (the only format).")
    ] = "circuit-tracer",
    top_k: Annotated[int | None, typer.Option(help="Keep the K strongest links.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out.")] = False,
) -> None:
    """Write a prompt's graph as circuit-tracer JSON (Neuronpedia's upload format, under its
    100 MiB limit)."""
    from attnfast.attributions.circuit_tracer import export_graph

    with user_errors():
        if format != "circuit-tracer":
            raise ValueError(f"--format must be 'circuit-tracer', not {format!r}")
        new_output(out, overwrite)
        with _open(db) as store:
            graph = export_graph(store, prompt, top_k=top_k)
        with removed_on_failure(out):
            out.write_text(json.dumps(graph))
    console.print(f"wrote {out}: {len(graph['nodes'])} nodes, {len(graph['links'])} links")


@attributions.command()
def search(
    db: Db,
    components: Annotated[str, typer.Option(help="Comma-separated component keys.")],
    mode: Annotated[Mode, typer.Option(help="all (every key) or any.")] = Mode.all,
    not_: Annotated[
        str | None, typer.Option("--not", help="Comma-separated keys that must not be active.")
    ] = None,
    same_position: Annotated[
        bool, typer.Option("--same-position", help="All keys active at one token position.")
    ] = False,
    limit: Annotated[int, typer.Option(help="Results per page.")] = 20,
    offset: Annotated[int, typer.Option(help="Results to skip.")] = 0,
    format: Annotated[Format, typer.Option(help="table or json.")] = Format.table,
) -> None:
    """Prompts where components fire together (all), or any of them, without the --not ones."""
    from attnfast.attributions.keys import split_keys

    with user_errors():
        keys = split_keys(components)
        excluded = split_keys(not_) if not_ else []
        if limit < 0 or offset < 0:
            raise ValueError("--limit and --offset must be >= 0")
        with _open(db) as store:
            unknown = store.unknown_components(keys + excluded)
            ids = store.find_prompt_ids(
                keys, mode is Mode.all, exclude=excluded, same_position=same_position
            )
            page = store.get_prompt_summaries(ids[offset : offset + limit].tolist())
    if format is Format.json:
        print(
            json.dumps(
                {
                    "query": {"components": keys, "mode": mode.value, "not": excluded},
                    "count": len(ids),
                    "limit": limit,
                    "offset": offset,
                    "unknown": unknown,
                    "results": page,
                }
            )
        )
        return
    for k in unknown:
        warn(f"component {k} is active on no prompt of {db}")
    table = Table("id", "tokens", "preview", title=f"{len(ids)} prompts")
    for r in page:
        table.add_row(str(r["id"]), str(len(r["tokens"])), escape(r["preview"]))
    console.print(table)
    if offset + limit < len(ids):
        console.print(f"more: --offset {offset + limit}")


@attributions.command()
def stats(
    db: Db,
    component: Annotated[str, typer.Option(help="A component key, e.g. h.0.attn.q_proj:5.")],
    format: Annotated[Format, typer.Option(help="table or json.")] = Format.table,
) -> None:
    """How many prompts a component is active on, and its max importance there."""
    with user_errors(), _open(db) as store:
        s = store.get_component_stats(component)
        contexts = (store.get_activation_contexts() or {}).get(component)
    if format is Format.json:
        print(
            json.dumps(
                {
                    **(s.to_dict() if s else {"component_key": component, "prompt_count": 0}),
                    "context": contexts,
                }
            )
        )
        return
    if s is None:
        warn(f"component {component} is active on no prompt of {db}")
        return
    console.print(
        f"{component}: {s.prompt_count} prompts, max_ci mean {s.mean_max_ci:.4g}, max "
        f"{s.max_max_ci:.4g}; first prompts {s.prompt_ids[:10]}"
    )
    if isinstance(contexts, dict) and contexts.get("example_tokens"):
        console.print(
            f"mean importance {contexts.get('mean_ci', 0):.4g}; examples "
            f"{escape(str(contexts.get('example_contexts', [])[:5]))}"
        )


@attributions.command()
def show(
    db: Db,
    prompt: Annotated[int, typer.Option("--prompt", help="Prompt id.")],
    top_k: Annotated[int, typer.Option(help="Strongest edges to show.")] = 20,
    normalize: Annotated[bool, typer.Option("--normalize", help="Normalise by target.")] = False,
    max_mean_ci: Annotated[
        float | None, typer.Option(help="Drop components whose mean importance is above.")
    ] = None,
    format: Annotated[Format, typer.Option(help="table or json.")] = Format.table,
) -> None:
    """A prompt's tokens and its strongest edges (the seed's serving order)."""
    from attnfast.exceptions import InvalidInputError

    with user_errors(), _open(db) as store:
        if top_k < 0:
            raise InvalidInputError("--top-k must be >= 0")
        record = store.get_prompt(prompt)
        if record is None:
            raise InvalidInputError(f"no prompt {prompt} in {db}")
        edges = []
        if record.graph is not None:
            edges = record.graph.edges(
                top_k,
                normalize=normalize,
                max_mean_ci=max_mean_ci,
                mean_ci=store.mean_ci() if max_mean_ci is not None else None,
            )
        n_edges = 0 if record.graph is None else record.graph.n_edges
    if format is Format.json:
        print(
            json.dumps(
                {
                    "id": record.id,
                    "tokens": record.labels,
                    "edges": edges,
                    "outputProbs": record.output_probs,
                }
            )
        )
        return
    console.print(f"prompt {record.id}: {escape(''.join(record.labels))!s}")
    if record.graph is None:
        console.print("no stored graph (on-demand database)")
        return
    table = Table("src", "tgt", "val", title=f"top {len(edges)} of {n_edges:,} edges")
    for e in edges:
        table.add_row(e["src"], e["tgt"], f"{e['val']:+.4g}")
    console.print(table)


@attributions.command()
def merge(
    db: Db,
    sources: Annotated[list[Path], typer.Argument(help="Databases to copy in (any form).")],
) -> None:
    """Copy the prompts of other databases (attnfast's or the seed's) into DB, with new ids."""
    with user_errors():
        from attnfast.exceptions import MissingFileError

        for s in sources:
            if not s.is_file():
                raise MissingFileError(f"{s} does not exist")
        with removed_on_failure(db), LocalAttrDB(db) as store:
            results = [(s, store.merge_from(s)) for s in sources]
    for s, r in results:
        console.print(f"{escape(str(s))}: {r.added} prompts added, {r.skipped} already there")
