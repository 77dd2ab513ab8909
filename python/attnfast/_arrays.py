"""Turning user input (numpy arrays, torch tensors, lists) into the arrays the core reads,
without copying when the input is already right."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from attnfast.exceptions import DtypeError, ShapeError


def is_torch_tensor(x: object) -> bool:
    """True for a torch tensor, without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def to_numpy(x: Any) -> NDArray[Any]:
    """A numpy view of ``x``. Torch CPU tensors are viewed in place (``Tensor.numpy`` shares
    memory); CUDA tensors are copied to the host; bfloat16, which numpy lacks, becomes float32."""
    if is_torch_tensor(x):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return np.asarray(t.numpy())
    return np.asarray(x)


def attention_array(x: Any, what: str = "attention") -> NDArray[Any]:
    """A C-contiguous, native-endian float32 or float16 array. float64 is narrowed to float32
    (one copy); anything that is not a real float is a :class:`DtypeError`."""
    a = to_numpy(x)
    if a.dtype.kind != "f":
        raise DtypeError(
            f"{what} must be float32 or float16 (float64 and bfloat16 are converted), "
            f"got dtype {a.dtype}"
        )
    if a.dtype.itemsize > 4:
        a = a.astype(np.float32)
    elif a.dtype.itemsize not in (2, 4):
        raise DtypeError(f"{what} has unsupported float dtype {a.dtype}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a)


def float32_rows(x: Any, what: str, width: int) -> NDArray[np.float32]:
    """A C-contiguous float32 ``(T, width)`` array from rows, or from one row."""
    a = to_numpy(x)
    if a.dtype.kind not in "fiu":
        raise DtypeError(f"{what} must hold real numbers, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != width:
        raise ShapeError(f"{what} must be ({width},) or (T, {width}), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def int64_array(x: Any, what: str) -> NDArray[np.int64]:
    """A C-contiguous int64 array of integer input; floats are refused rather than truncated."""
    a = to_numpy(x)
    if a.dtype.kind not in "iu":
        raise DtypeError(f"{what} must be integers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)
