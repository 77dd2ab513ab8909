"""Reading the arrays users hand the command line, with errors that name the file: ``.npy``
arrays (never pickles) and packed 80-byte rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast.exceptions import DecodeError, InvalidInputError, MissingFileError
from attnfast.fingerprint import unpack_fingerprints

PACKED_SUFFIXES = (".fp", ".bin")


def existing_file(path: Path) -> Path:
    if not path.exists():
        raise MissingFileError(f"{path}: no such file")
    if not path.is_file():
        raise MissingFileError(f"{path} is not a file")
    return path


NPY_MAGIC = b"\x93NUMPY"
NPZ_MAGIC = b"PK\x03\x04"


def load_npy(path: Path, *, mmap: bool = False) -> NDArray[Any]:
    """One ``.npy`` array. Pickled object arrays are refused: loading one runs its code."""
    existing_file(path)
    with path.open("rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if magic.startswith(NPZ_MAGIC):
        raise DecodeError(f"{path} is an .npz archive of several arrays; give one .npy array")
    if magic != NPY_MAGIC:
        # numpy would try it as a pickle and say so: misleading for a text or damaged file.
        raise DecodeError(f"{path} is not a .npy file (it does not start with numpy's header)")
    try:
        array: NDArray[Any] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        if any(word in str(e) for word in ("allow_pickle", "pickled", "Python objects")):
            raise DecodeError(
                f"{path} holds an object array (a pickle): refused, since loading one runs "
                "its code; save numbers (np.save of a float array)"
            ) from None
        raise DecodeError(f"{path} is not a readable .npy array ({e})") from None
    return array


def load_packed(path: Path) -> NDArray[np.float32]:
    """Packed little-endian float32 rows of 20 (``.fp``/``.bin``)."""
    try:
        return unpack_fingerprints(existing_file(path).read_bytes())
    except InvalidInputError as e:
        raise type(e)(f"{path}: {e}") from None


def load_fingerprints(path: Path) -> NDArray[Any]:
    """Fingerprints from a ``.npy`` array or packed rows, by suffix."""
    if path.suffix in PACKED_SUFFIXES:
        return load_packed(path)
    if path.suffix == ".npy":
        return load_npy(path)
    raise DecodeError(
        f"{path}: expected a .npy array or packed rows ({', '.join(PACKED_SUFFIXES)})"
    )
