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


def on_current_torch_stream(*arrays) -> bool:
    """Whether every array is a torch tensor on the device of the first: then the stream cuda_stream_of
    picks is torch's current stream for all of them, where torch already ordered their producers, and
    the native call may ask DLPack for no synchronization (same_stream=True saves torch's per-tensor
    stream bookkeeping, ~20 us each). Anything else (NumPy, CuPy, a mix) keeps the DLPack handshake."""
    if not arrays or not is_torch(arrays[0]):
        return False
    dev = arrays[0].device
    return all(is_torch(a) and a.device == dev for a in arrays)


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
