"""``attnfast version`` and ``attnfast demo``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

import attnfast
from attnfast.cli._app import app, console, user_errors
from attnfast.layout import Layout


@app.command()
def version(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the version, the core's vector path and thread count, and the known layouts."""
    info = attnfast.build_info()
    layouts = {layout.value: layout.code for layout in Layout}
    if as_json:
        console.print_json(json.dumps({**info, "layouts": layouts}))
        return
    console.print(f"attnfast {info['version']}")
    console.print(f"core: {info['simd']} path, {info['threads']} threads")
    console.print("layouts: " + ", ".join(f"{k} (code {v})" for k, v in layouts.items()))


@app.command()
def demo() -> None:
    """Run the pipeline on built-in inputs and show what each stage gives."""
    from attnfast.demo import run

    with user_errors():
        run(console)
