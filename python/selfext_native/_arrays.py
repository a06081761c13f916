"""Array plumbing for the ops: allocate outputs with the caller's framework, find the caller's CUDA
stream. The native module never links torch; it only sees DLPack capsules and buffers."""
from __future__ import annotations

import sys

import numpy as np

from .errors import ArrayTypeError


def _torch():
    return sys.modules.get("torch")  # never import torch ourselves: it is optional


def is_torch(x) -> bool:
    t = _torch()
    return t is not None and isinstance(x, t.Tensor)


def is_cuda(x) -> bool:
    dev = getattr(x, "__dlpack_device__", None)
    return dev is not None and dev()[0] in (2, 13)


def empty_like(x, shape, dtype=None):
    """An uninitialized array of `shape` of the same kind and device as `x` (torch or NumPy)."""
    if is_torch(x):
        return _torch().empty(shape, dtype=dtype if dtype is not None else x.dtype, device=x.device)
    if isinstance(x, np.ndarray):
        return np.empty(shape, dtype=dtype if dtype is not None else x.dtype)
    mod = type(x).__module__.split(".")[0]
    if mod == "cupy":
        import cupy  # the caller already uses it

        return cupy.empty(shape, dtype=dtype if dtype is not None else x.dtype)
    raise ArrayTypeError(
        f"expected a NumPy array or a torch tensor (or CuPy on CUDA), got {type(x).__name__}"
    )


def cuda_stream_of(x) -> int:
    """The stream a CUDA op on `x` must run on: the caller's current stream (DLPack: the consumer names
    it). 0 for CPU arrays."""
    if not is_cuda(x):
        return 0
    if is_torch(x):
        return _torch().cuda.current_stream(x.device).cuda_stream
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy.cuda.get_current_stream().ptr
    return 0
