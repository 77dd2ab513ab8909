"""The exceptions attnfast raises. Every one derives from :class:`AttnfastError`; bad input also
derives from :class:`ValueError`, so ``except ValueError`` keeps working for callers that do not
know attnfast."""

from __future__ import annotations


class AttnfastError(Exception):
    """Base class of every error attnfast raises on purpose."""


class InvalidInputError(AttnfastError, ValueError):
    """Input that attnfast refuses. The message names what was wrong and where."""


class AttentionValueError(InvalidInputError):
    """An attention weight or position is unusable: NaN, infinite, negative, a row summing to
    zero, a position outside the context, a repeated top-k position."""


class ShapeError(InvalidInputError):
    """Arrays whose shapes disagree or have the wrong number of dimensions."""


class DtypeError(InvalidInputError):
    """An array of a dtype attnfast cannot read as attention (integers, complex, objects)."""


class BlobError(InvalidInputError):
    """A packed fingerprint blob that is not whole rows, or holds non-finite values."""


class DecodeError(InvalidInputError):
    """Bytes that are not in the format they claim to be: JSON that does not parse, a file
    that is not the array or table it is named as. Servers answer it with 400."""


class LayoutError(InvalidInputError):
    """A fingerprint layout name or code that this version does not know, or one used where
    another is required."""


class StoreError(AttnfastError):
    """The store could not open, read or write its database, or is closed. The message names the
    file and says which rows, if any, were not stored."""


class DuplicateStepError(StoreError):
    """Under ``on_duplicate="error"``: rows repeated a stored ``(request_id, step)``. They were
    not written; the stored rows and the other rows of their batches were."""


class MissingFileError(AttnfastError, FileNotFoundError):
    """A file or folder that should exist does not: a database to query, a capture file, an
    input, the folder of a new database. Also a :class:`FileNotFoundError`."""


class CaptureFileError(AttnfastError):
    """A capture file that cannot be created or read: not a capture file, an unsupported
    version, or a damaged chunk. The message names the file and the chunk; the intact chunks
    stay readable."""


class ArtifactError(AttnfastError, ValueError):
    """A discovery artifact folder that cannot be used: written by another attnfast format
    version, a truncated or damaged file, a manifest that does not match its files. The message
    names the file; run discovery again to replace it."""


class GraphError(AttnfastError, ValueError):
    """An attribution graph that cannot be stored or read: a blob that is damaged or not a graph,
    a repeated node or edge, a value that is not finite. Read from a database, the message names
    the prompt."""


class CaptureError(AttnfastError):
    """A model whose attention cannot be captured, or capture options that do not fit it; the
    message says which module and what to change."""


__all__ = [
    "ArtifactError",
    "AttentionValueError",
    "AttnfastError",
    "BlobError",
    "CaptureError",
    "CaptureFileError",
    "DecodeError",
    "DtypeError",
    "DuplicateStepError",
    "GraphError",
    "InvalidInputError",
    "LayoutError",
    "MissingFileError",
    "ShapeError",
    "StoreError",
]
