"""Fingerprint layouts. The tag travels with every stored vector; layouts are never mixed."""

from __future__ import annotations

import enum

from attnfast import _core
from attnfast.exceptions import LayoutError

_BY_NAME = {name: (code, dim, tuple(fields)) for name, code, dim, fields in _core.LAYOUTS}


class Layout(enum.Enum):
    """A fingerprint layout.

    ``V1`` is attnfast's own (``docs/fingerprint-v1.md``; code 1, the seed schema's
    ``schema_version`` 1). ``SGLANG`` is what the SGLang attention-explorer server sends:
    ``[local(<8), mid(8..255), long(>=256), entropy/ln16, hist16]`` (code 1001).
    """

    V1 = "v1"
    SGLANG = "sglang"

    @property
    def code(self) -> int:
        """The integer stored in the ``schema_version`` column."""
        return _BY_NAME[self.value][0]

    @property
    def dim(self) -> int:
        """Floats per vector."""
        return _BY_NAME[self.value][1]

    @property
    def fields(self) -> tuple[str, ...]:
        """Field names, in order."""
        return _BY_NAME[self.value][2]

    @classmethod
    def of(cls, layout: Layout | str | int) -> Layout:
        """A layout from itself, its name or its code, with a clear error for anything else."""
        if isinstance(layout, Layout):
            return layout
        for candidate in cls:
            if layout in (candidate.value, candidate.code) and not isinstance(layout, bool):
                return candidate
        known = ", ".join(f"{c.value} (code {c.code})" for c in cls)
        raise LayoutError(f"unknown fingerprint layout {layout!r}; known layouts: {known}")


__all__ = ["Layout"]
