"""Array-level kernels: NumPy arrays or torch tensors in (CPU; CUDA through DLPack), the same kind out.

Every op allocates its output with the caller's framework and runs on the caller's CUDA stream."""
from __future__ import annotations

from . import _native
from ._arrays import cuda_stream_of, empty_like


def rms_norm(x, weight, eps: float = 1e-6, *, out=None):
    """RMSNorm over the last axis: ``x / sqrt(mean(x**2) + eps) * weight``.

    x: (..., n) float32/float16/bfloat16, contiguous; weight: (n,) float32 on the same device."""
    if out is None:
        out = empty_like(x, tuple(x.shape))
    _native.rms_norm(x, weight, out, float(eps), cuda_stream_of(x))
    return out


# The attention and quantized-weight kernels live in their own modules; one import point for users.
from .attention import cope_attention, self_extend_attention  # noqa: E402
from .quant import dequantize, matmul_quant  # noqa: E402

__all__ = ["cope_attention", "dequantize", "matmul_quant", "rms_norm", "self_extend_attention"]
