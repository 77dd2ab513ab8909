"""The Typer application and what every command shares: the console, one-line errors, and
removing what a failed command created.

Every failure is one line on stderr and exit status 2: attnfast's own errors, files that are
missing or unreadable, bad values of other libraries (``ValueError``), and usage errors that
click would print as a box. ``ATTNFAST_DEBUG=1`` shows the traceback instead."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from attnfast.exceptions import AttnfastError, InvalidInputError, MissingFileError

try:  # typer 0.2x raises its vendored copy of click's exceptions
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on top of click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

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

# What the command line reports as bad input: attnfast's errors, files that cannot be read or
# written, and the ValueErrors other libraries raise for bad values (numpy, pyarrow, json).
USER_ERRORS = (AttnfastError, OSError, ValueError, EOFError)


def one_line(message: str) -> str:
    return " ".join(message.split())


def fail(message: str) -> None:
    """Prints ``error: message`` on one line of stderr."""
    err_console.print(f"[bold red]error:[/bold red] {escape(one_line(message))}", soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(one_line(message))}", soft_wrap=True)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, AttnfastError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    return str(e) or type(e).__name__


@contextmanager
def user_errors() -> Iterator[None]:
    """Turns bad input into a one-line message and exit status 2, instead of a traceback."""
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("ATTNFAST_DEBUG"):
            raise
        fail(_describe(e))
        raise typer.Exit(code=2) from e


Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")]


def new_output(path: Path, overwrite: bool) -> None:
    """Refuses an ``--out`` file that exists, unless the user passed ``--overwrite``: no command
    replaces a file it was not told to (a typo in ``--out`` must not destroy an input)."""
    if path.is_dir():
        raise InvalidInputError(f"--out {path} is a folder; name a file")
    if path.exists() and not overwrite:
        raise InvalidInputError(f"--out {path} exists; pass --overwrite to replace it")
    if not path.absolute().parent.is_dir():
        # Not made: a typo in a folder name should not create a tree of folders.
        raise MissingFileError(f"--out {path}: the folder {path.parent} does not exist")


def companions(path: Path) -> list[Path]:
    """A file and the files SQLite keeps beside a database."""
    return [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))]


@contextmanager
def removed_on_failure(*paths: Path) -> Iterator[None]:
    """Removes, if the block fails, each of ``paths`` (files or folders, and a database's
    ``-wal``/``-shm``) that did not exist when it started: a failed command leaves nothing
    new behind. What existed before is left as it is."""
    new = [p for path in paths for p in companions(path) if not p.exists()]
    try:
        yield
    except BaseException:
        for p in new:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        raise


# click 8.2 raises this for a group called without a command; older versions print the help.
_NO_ARGS = getattr(click_errors, "NoArgsIsHelpError", ())


def main() -> None:
    """Entry point of the ``attnfast`` script."""
    try:
        code = app(standalone_mode=False)
    except _NO_ARGS:
        sys.exit(0)  # typer has printed the help
    except click_errors.UsageError as e:
        command = e.ctx.command_path if e.ctx else "attnfast"
        fail(f"{e.format_message()} (see `{command} --help`)")
        sys.exit(2)
    except click_errors.ClickException as e:
        fail(e.format_message())
        sys.exit(2)
    except typer.Abort:
        fail("aborted")
        sys.exit(1)
    sys.exit(code or 0)
