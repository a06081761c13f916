"""Products with quantized GGUF weights on the CPU and on CUDA, for tests and benchmarks (the inference
loop calls the C++ directly).

    >>> y = matmul_quant(tensor.data, "Q4_K", (rows, cols), x)   # x (cols,) or (n, cols) float32
    >>> w = dequantize(tensor.data, "Q4_K", (rows, cols))        # (rows, cols) float32
    >>> e = embed_rows(tensor.data, "Q4_K", (rows, cols), ids)   # (len(ids), cols) float32

``weight_bytes`` is any contiguous CPU buffer holding the GGUF blocks row by row (bytes, a NumPy array
from ``gguf.GGUFReader``, ...), or a CUDA uint8 tensor holding them (then x must be a CUDA float32
tensor on the same device; the output is a torch tensor there, computed on torch's current stream).
``qtype`` is a GGML type id or its name. On the CPU, integer formats quantize each activation row to 8
bits first (see ``quantize_activations``); F32/F16/BF16 use float32 activations. On CUDA the weights
meet float32 activations (matrix-vector kernel, n <= 8) or fp16-rounded ones (tensor cores, n > 8).
"""
from __future__ import annotations

import numpy as np

from . import _native
from ._arrays import cuda_stream_of, empty_like, is_cuda
from .errors import ArgumentError, ArrayTypeError

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


def matmul_quant(weight_bytes, qtype, shape, x, *, out=None, accumulate=False):
    """``x @ W.T`` with W (rows, cols) in GGUF blocks: x (cols,) -> (rows,), x (n, cols) -> (n, rows).

    CUDA weights (a CUDA uint8 tensor) take a CUDA float32 x and return a CUDA tensor; accumulate=True
    (CUDA only, with out given) adds the product to out instead of overwriting it."""
    rows, cols = _shape(shape)
    if is_cuda(weight_bytes) or is_cuda(x):
        if not (is_cuda(weight_bytes) and is_cuda(x)):
            where = lambda a: "cuda" if is_cuda(a) else "cpu"  # noqa: E731
            raise ArrayTypeError(
                f"weight_bytes is on {where(weight_bytes)} but x is on {where(x)}; "
                "both must be on the CPU or both on the same CUDA device"
            )
        if out is None:
            if accumulate:
                raise ArgumentError("accumulate=True needs out (the values to add to)")
            out = empty_like(x, tuple(x.shape[:-1]) + (rows,))
        _native.matmul_quant_cuda(weight_bytes, qtype_id(qtype), rows, cols, x, out, bool(accumulate),
                                  cuda_stream_of(x))
        return out
    if accumulate:
        raise ArgumentError("accumulate=True is a CUDA-only option (the CPU op overwrites out)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty(x.shape[:-1] + (rows,), dtype=np.float32)
    _native.matmul_quant(weight_bytes, qtype_id(qtype), rows, cols, x, out)
    return out


def embed_rows(weight_bytes, qtype, shape, ids, *, out=None):
    """Rows ``ids`` of W (rows, cols) dequantized to float32: (len(ids), cols). ids are checked here,
    on the host, against [0, rows). CUDA weights give a CUDA tensor (torch's current stream)."""
    rows, cols = _shape(shape)
    ids_host = np.asarray(ids.cpu() if hasattr(ids, "cpu") else ids)
    if ids_host.ndim != 1 or not np.issubdtype(ids_host.dtype, np.integer):
        raise ArgumentError(f"ids must be a 1-D integer array, got shape {ids_host.shape} dtype {ids_host.dtype}")
    bad = np.flatnonzero((ids_host < 0) | (ids_host >= rows))
    if bad.size:
        raise ArgumentError(f"ids[{bad[0]}] = {ids_host[bad[0]]} is outside [0, {rows})")
    ids32 = ids_host.astype(np.int32)
    if is_cuda(weight_bytes):
        import torch  # a CUDA weight tensor means torch is there

        dev = weight_bytes.device
        if out is None:
            out = torch.empty((ids32.shape[0], cols), dtype=torch.float32, device=dev)
        ids_dev = torch.from_numpy(ids32).to(dev)
        _native.embed_rows_cuda(weight_bytes, qtype_id(qtype), rows, cols, ids_dev, out, cuda_stream_of(out))
        return out
    data = np.frombuffer(weight_bytes, dtype=np.uint8) if not isinstance(weight_bytes, np.ndarray) else weight_bytes
    data = data.reshape(-1).view(np.uint8)
    if data.size % rows:
        raise ArgumentError(f"weight_bytes has {data.size} bytes, not a whole number of {rows} rows")
    picked = np.ascontiguousarray(data.reshape(rows, -1)[ids32])
    return dequantize(picked.reshape(-1), qtype, (ids32.shape[0], cols), out=out)


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


__all__ = ["SUPPORTED", "block_info", "dequantize", "embed_rows", "matmul_quant", "qtype_id",
           "quantize_activations"]
