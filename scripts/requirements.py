"""Prints the requirements of pyproject.toml, one per line: the base dependencies and the
extras named on the command line. The Makefile installs them before building, so the
dependency list lives in one place."""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path(__file__).parent.parent.joinpath("pyproject.toml").read_text())[
    "project"
]
requirements = list(project["dependencies"])
for extra in sys.argv[1:]:
    requirements += project["optional-dependencies"][extra]
print("\n".join(requirements))
