"""Every Python example in the README and docs runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    pytest.param(block, id=f"{path.name}-{i}")
    for path in DOCS
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
]


def test_there_are_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS)
def test_example_runs(block, capsys):
    exec(compile(block, "<doc>", "exec"), {})
    printed = capsys.readouterr().out
    # Examples that say what they print must print it.
    for expected in re.findall(r"# (attention step .*)", block):
        assert expected in printed


@pytest.mark.parametrize(
    "module",
    [
        "attnfast",
        "attnfast.store",
        "attnfast.messages",
        "attnfast.capture_file",
        "attnfast.models",
        "attnfast.models.attention",
        "attnfast.models.causal_lm",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    """The ``>>>`` examples in module docstrings are part of the docs too."""
    import doctest
    import importlib

    results = doctest.testmod(importlib.import_module(module))
    assert results.attempted > 0
    assert results.failed == 0
