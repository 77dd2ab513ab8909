"""HTTP statuses from exception classes, so that every server answers the same error the same
way, whatever its message says. Error bodies are ``{"error": "<message>"}``."""

from __future__ import annotations

from attnfast.exceptions import (
    AttnfastError,
    BlobError,
    DecodeError,
    InvalidInputError,
    MissingFileError,
)


class BodyTooLargeError(InvalidInputError):
    """A request body over the server's limit, refused before it was read in full."""


class UnavailableError(AttnfastError):
    """Something a server can provide is not there now (no classifier loaded)."""


# First match wins: subclasses before their bases.
STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (BodyTooLargeError, 413),
    (DecodeError, 400),  # the body is not what it claims to be (not JSON)
    (BlobError, 400),  # packed rows that are not whole rows of finite floats
    (MissingFileError, 404),
    (InvalidInputError, 422),  # readable, but refused: names the field
    (UnavailableError, 503),
    (AttnfastError, 500),
)


def status_of(error: BaseException) -> int:
    """The HTTP status that answers ``error``."""
    for cls, status in STATUSES:
        if isinstance(error, cls):
            return status
    return 500


__all__ = ["STATUSES", "BodyTooLargeError", "UnavailableError", "status_of"]
