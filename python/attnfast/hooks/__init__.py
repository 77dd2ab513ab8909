"""Capture hooks: record a model's attention while it generates (see :func:`capture`)."""

from __future__ import annotations

from attnfast.hooks.records import StepRecord
from attnfast.hooks.session import MODES, Capture, capture

__all__ = ["MODES", "Capture", "StepRecord", "capture"]
