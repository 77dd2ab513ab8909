"""Times as the store keeps them: integer unix microseconds, UTC. Accepts what users have:
datetimes, unix seconds, numpy datetime64, ISO text, and durations like ``24h`` meaning
"that long ago"."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast.exceptions import InvalidInputError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# A bare number is unix seconds (what `date +%s` prints, and what a command line passes as text).
_SECONDS = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")


def now_us() -> int:
    return time.time_ns() // 1000


def to_us(value: Any, what: str) -> int:
    """One time as unix microseconds. Naive datetimes and ISO text without an offset are UTC,
    as SQLite's CURRENT_TIMESTAMP is."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return round(aware.timestamp() * 1e6)
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[us]").astype(np.int64))
    if isinstance(value, bool):
        raise InvalidInputError(f"{what} must be a time, got {value!r}")
    if isinstance(value, int | float | np.integer | np.floating):
        if not np.isfinite(value):
            raise InvalidInputError(f"{what} must be a finite time, got {value!r}")
        return round(float(value) * 1e6)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
            return now_us() - round(seconds * 1e6)
        if _SECONDS.match(value):
            return to_us(float(value), what)
        try:
            return to_us(datetime.fromisoformat(value.strip()), what)
        except ValueError:
            pass
    raise InvalidInputError(
        f"{what} must be a datetime, unix seconds, ISO text or a duration such as 24h, 30m, "
        f"7d; got {value!r}"
    )


def check_window(since_us: int | None, until_us: int | None) -> None:
    """Refuses a window that ends before it starts: it can hold no row, and is most often
    ``--since 1h --until 2h`` meant the other way round."""
    if since_us is not None and until_us is not None and until_us <= since_us:
        raise InvalidInputError(
            f"until ({format_us(until_us)}) must be after since ({format_us(since_us)}); "
            "durations count back from now, so --since 2h --until 1h is the hour before last"
        )


def to_us_array(value: Any, rows: int, what: str) -> NDArray[np.int64]:
    """Per-row times as unix microseconds; one time is repeated for every row."""
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.datetime64):
        out = value.astype("datetime64[us]").astype(np.int64).reshape(-1)
    elif isinstance(value, np.ndarray | list | tuple):
        arr = np.asarray(value)
        if arr.dtype.kind in "iuf":
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise InvalidInputError(f"{what} holds a non-finite time")
            out = np.rint(arr.astype(np.float64).reshape(-1) * 1e6).astype(np.int64)
        else:
            out = np.array([to_us(v, what) for v in arr.reshape(-1).tolist()], dtype=np.int64)
    else:
        return np.full(rows, to_us(value, what), dtype=np.int64)
    if len(out) != rows:
        raise InvalidInputError(f"{what} has {len(out)} rows but steps has {rows}")
    return out


def format_us(us: int) -> str:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` UTC."""
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
