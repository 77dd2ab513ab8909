"""The Typer application and what every command shares: the console and error handling."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from attnfast.exceptions import AttnfastError

app = typer.Typer(
    name="attnfast",
    help="See where a language model's attention goes: fingerprints, zones and more.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Logs and pipes get a width that fits the tables; a terminal keeps its own.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turns attnfast's errors and missing files into a one-line message and exit code 2,
    instead of a traceback."""
    try:
        yield
    except (AttnfastError, FileNotFoundError, IsADirectoryError) as e:
        err_console.print(f"[bold red]error:[/bold red] {e}")
        raise typer.Exit(code=2) from e
