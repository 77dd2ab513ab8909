"""Request bodies read under a size limit, refused as soon as they pass it."""

from __future__ import annotations

from typing import Any

from attnfast.exceptions import InvalidInputError
from attnfast.servers.errors import BodyTooLargeError


async def read_body(request: Any, limit: int) -> bytearray:
    """The body of a Starlette ``request``, at most ``limit`` bytes. A declared length over
    the limit is refused before anything is read; a chunked body (no length) is refused at
    the first chunk past it, so memory never holds more than the limit and one chunk."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise InvalidInputError(f"Content-Length must be a number of bytes, got {length!r}")
        if int(length) > limit:
            raise BodyTooLargeError(
                f"the body of {int(length):,} bytes exceeds the limit of {limit:,} bytes"
            )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLargeError(
                f"the body exceeds the limit of {limit:,} bytes (refused after {len(body):,})"
            )
    return body


__all__ = ["read_body"]
