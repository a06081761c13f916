"""Products with quantized GGUF weights on the CPU, for tests and benchmarks (the inference loop calls
the C++ directly).

    >>> y = matmul_quant(tensor.data, "Q4_K", (rows, cols), x)   # x (cols,) or (n, cols) float32
    >>> w = dequantize(tensor.data, "Q4_K", (rows, cols))        # (rows, cols) float32

``weight_bytes`` is any contiguous CPU buffer holding the GGUF blocks row by row (bytes, a NumPy array
from ``gguf.GGUFReader``, ...). ``qtype`` is a GGML type id or its name. Integer formats quantize each
activation row to 8 bits first (see ``quantize_activations``); F32/F16/BF16 use float32 activations.
"""
from __future__ import annotations

import numpy as np

from . import _native
from .errors import ArgumentError

_TABLE = {t["id"]: t for t in _native.qtype_table()}
_BY_NAME = {t["name"]: t["id"] for t in _TABLE.values()}

SUPPORTED = tuple(t["name"] for t in _TABLE.values() if t["supported"])


def qtype_id(qtype) -> int:
    """The GGML id of ``qtype`` (an int id, a name like "Q4_K", or a gguf GGMLQuantizationType)."""
    if isinstance(qtype, str):
        key = qtype.upper()
        if key not in _BY_NAME:
            raise ArgumentError(f"unknown qtype {qtype!r}; supported: {', '.join(SUPPORTED)}")
        return _BY_NAME[key]
    if isinstance(qtype, bool) or not isinstance(qtype, (int, np.integer)):
        raise ArgumentError(f"qtype must be a GGML type id or name, got {qtype!r}")
    return int(qtype)


def block_info(qtype) -> dict:
    """{id, name, block_size, block_bytes, supported} of a GGML type."""
    q = qtype_id(qtype)
    if q not in _TABLE:
        raise ArgumentError(f"qtype {q} is not a GGML type id")
    return dict(_TABLE[q])


def _shape(shape) -> tuple[int, int]:
    try:
        rows, cols = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ArgumentError(f"shape must be (rows, cols), got {shape!r}") from None
    return rows, cols


def matmul_quant(weight_bytes, qtype, shape, x, *, out=None) -> np.ndarray:
    """``x @ W.T`` with W (rows, cols) in GGUF blocks: x (cols,) -> (rows,), x (n, cols) -> (n, rows)."""
    rows, cols = _shape(shape)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty(x.shape[:-1] + (rows,), dtype=np.float32)
    _native.matmul_quant(weight_bytes, qtype_id(qtype), rows, cols, x, out)
    return out


def dequantize(weight_bytes, qtype, shape, *, out=None) -> np.ndarray:
    """The (rows, cols) float32 weights of ``weight_bytes``."""
    rows, cols = _shape(shape)
    if out is None:
        out = np.empty((rows, cols), dtype=np.float32)
    _native.dequantize(weight_bytes, qtype_id(qtype), rows, cols, out)
    return out


def quantize_activations(qtype, x) -> np.ndarray:
    """The 8-bit activation blocks an integer-format product uses for x (n, cols), as raw bytes:
    per 32 values (legacy formats) float32 d, float32 d*sum, int32 sum, int32 pad, int8 q[32];
    per 256 values (K-quants) float32 d, int8 q[256], int16 bsums[16]."""
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    q = qtype_id(qtype)
    info = block_info(q)
    n, cols = x.shape
    per = 292 if info["block_size"] == 256 else 48
    nb = cols // info["block_size"] if info["block_size"] else 0
    out = np.empty(n * nb * per, dtype=np.uint8)
    _native.quantize_activations(q, x, out)
    return out


__all__ = ["SUPPORTED", "block_info", "dequantize", "matmul_quant", "qtype_id", "quantize_activations"]
