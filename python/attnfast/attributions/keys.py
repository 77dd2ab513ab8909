"""Component keys, ``"<layer>:<index>"`` as the seed writes them (``h.0.attn.q_proj:5``), and the
specials: ``wte:0`` (the token embedding), ``output:<token_id>`` (an output token), and for
imported circuit-tracer graphs ``<layer>:<feature>`` and ``error.<layer>:0``."""

from __future__ import annotations

import re
from collections.abc import Iterable

from attnfast.exceptions import InvalidInputError

# A layer: letters, digits, '.', '_' and '-', no ':' (the separator) and no whitespace.
_KEY = re.compile(r"^([A-Za-z0-9_.\-]{1,255}):([0-9]{1,10})$")

#: Keys of special nodes.
EMBEDDING = "wte"
OUTPUT = "output"


def parse_key(key: object) -> tuple[str, int]:
    """``(layer, index)`` of a key, or an :class:`InvalidInputError` saying what is wrong."""
    if not isinstance(key, str):
        raise InvalidInputError(f"a component key is a string, got {type(key).__name__}")
    m = _KEY.match(key)
    if m is None or int(m.group(2)) >= 2**32:
        raise InvalidInputError(
            f"malformed component key {key!r}: expected '<layer>:<index>' such as "
            "'h.0.attn.q_proj:5', 'wte:0' or 'output:42'"
        )
    return m.group(1), int(m.group(2))


def check_keys(keys: Iterable[object]) -> list[str]:
    """The keys as a list, each checked; a single string is refused (it is not a list)."""
    if isinstance(keys, str):
        raise InvalidInputError(
            f"give a list of component keys, not the string {keys!r} (split it on ',')"
        )
    out = []
    for k in keys:
        parse_key(k)
        out.append(str(k))
    return out


def split_keys(text: str) -> list[str]:
    """``"a,b , c"`` as checked keys (the CLI's and the HTTP API's form)."""
    return check_keys(k.strip() for k in text.split(",") if k.strip())
