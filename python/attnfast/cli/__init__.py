"""The ``attnfast`` command. Each group of commands lives in its own module and registers
itself on :data:`app`."""

from __future__ import annotations

from attnfast.cli import (  # noqa: F401  (registers commands)
    attributions_cmds,
    capture_cmds,
    core_cmds,
    discovery_cmds,
    fingerprint_cmds,
    store_cmds,
)
from attnfast.cli._app import app, main

__all__ = ["app", "main"]
