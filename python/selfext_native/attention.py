"""Attention kernels at the array level: exact SelfExtend and fused CoPE.

NumPy arrays or torch tensors in (CPU; CUDA tensors through DLPack on CUDA builds), the same kind out,
allocated with the caller's framework; CUDA work runs on the caller's current stream. q is
``(T_q, H, D)``, k and v ``(T_k, H_kv, D)`` with H a multiple of H_kv (GQA/MQA); the T_q queries sit at the
last T_q positions of the T_k keys (T_q = T_k: prefill, T_q = 1: decode step, else a chunk). k arrives
before RoPE, as the KV cache stores it. float32 / float16 / bfloat16 inputs, float32 compute.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from . import _native
from ._arrays import cuda_stream_of, empty_like, on_current_torch_stream
from .errors import ArgumentError
from .rope import RopeConfig, rope_inv_freq

__all__ = ["self_extend_attention", "cope_attention", "rope_frequencies"]


def rope_frequencies(
    head_dim: int,
    *,
    rope_base: float = 10000.0,
    rope_dim: Optional[int] = None,
    rope_freq_scale: float = 1.0,
    rope_freq_factors=None,
) -> np.ndarray:
    """Per-pair inverse frequencies (rope_dim/2,) float64: ``rope_base**(-2i/rope_dim) * rope_freq_scale
    / rope_freq_factors[i]``, through rope.rope_inv_freq (the one place they are computed).

    rope_freq_scale follows llama.cpp (``--rope-freq-scale``): it multiplies every frequency, so 0.25 is
    linear interpolation by 4. rope_freq_factors are Llama-3.1's per-pair divisors (``rope_freqs.weight``).
    """
    rope_dim = head_dim if rope_dim is None else rope_dim
    if not isinstance(rope_dim, (int, np.integer)) or rope_dim < 2 or rope_dim % 2 or rope_dim > head_dim:
        raise ArgumentError(f"rope_dim must be an even integer in [2, head_dim = {head_dim}], got {rope_dim!r}")
    if not (math.isfinite(rope_freq_scale) and rope_freq_scale > 0):
        raise ArgumentError(f"rope_freq_scale must be finite and > 0, got {rope_freq_scale!r}")
    linear = rope_freq_scale != 1.0
    cfg = RopeConfig(
        freq_base=float(rope_base),
        dim=int(rope_dim),
        scaling_type="linear" if linear else "none",
        scaling_factor=1.0 / rope_freq_scale if linear else 1.0,
        freq_factors=None if rope_freq_factors is None else np.asarray(rope_freq_factors, dtype=np.float64),
    )
    try:
        inv_freq, _ = rope_inv_freq(cfg)
    except ValueError as e:  # rope.py speaks of the file's settings; name our arguments
        raise ArgumentError(f"RoPE settings: {e}") from None
    return np.ascontiguousarray(inv_freq, dtype=np.float64)


def _check_inv_freq(inv_freq, rope_dim: int) -> np.ndarray:
    f = np.ascontiguousarray(np.asarray(inv_freq, dtype=np.float64))
    if f.shape != (rope_dim // 2,):
        raise ArgumentError(f"inv_freq must have rope_dim/2 = {rope_dim // 2} entries, got shape {f.shape}")
    return f


def _head_dim(q) -> int:
    shape = tuple(q.shape)
    if len(shape) != 3:
        raise ArgumentError(f"q must have 3 dimensions (T_q, H, D), got shape {shape}")
    return int(shape[2])


def _scale(scale, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def self_extend_attention(
    q,
    k,
    v,
    *,
    group: int,
    window: int,
    rope_base: float = 10000.0,
    rope_style: str = "norm",
    rope_dim: Optional[int] = None,
    rope_freq_scale: float = 1.0,
    rope_freq_factors=None,
    inv_freq=None,
    mscale: float = 1.0,
    scale: Optional[float] = None,
):
    """Exact SelfExtend attention (Jin et al. 2024), one softmax over both branches.

    For query i and key j <= i: positions (i, j) when i - j < window, else
    (i // group + window - window // group, j // group); RoPE is applied inside, at those positions.
    group = 1 (or window >= T_k) is plain causal RoPE attention.

    rope_style: "norm" (pairs (2p, 2p+1), llama in GGUF) or "neox" (pairs (p, p + rope_dim/2)).
    rope_dim: rotated dims (default D, partial rotary below). inv_freq: explicit per-pair inverse
    frequencies (e.g. YaRN's), overriding rope_base / rope_freq_scale / rope_freq_factors; mscale
    multiplies the rotated q and k (YaRN's attention factor). scale defaults to 1/sqrt(D).
    Returns out (T_q, H, D) like q.
    """
    D = _head_dim(q)
    rope_dim = D if rope_dim is None else rope_dim
    if inv_freq is None:
        inv_freq = rope_frequencies(
            D, rope_base=rope_base, rope_dim=rope_dim, rope_freq_scale=rope_freq_scale,
            rope_freq_factors=rope_freq_factors,
        )
    else:
        inv_freq = _check_inv_freq(inv_freq, rope_dim)
    out = empty_like(q, tuple(q.shape))
    _native.self_extend_attention(
        q, k, v, out, group=group, window=window, inv_freq=inv_freq, rope_dim=rope_dim,
        scale=_scale(scale, D), mscale=float(mscale), rope_style=rope_style, stream=cuda_stream_of(q),
        same_stream=on_current_torch_stream(q, k, v, out),
    )
    return out


def cope_attention(
    q,
    k,
    v,
    pos_emb,
    *,
    scale: Optional[float] = None,
    scale_pos_logits: bool = False,
    rope_base: Optional[float] = None,
    rope_style: str = "norm",
    rope_dim: Optional[int] = None,
    rope_freq_scale: float = 1.0,
    rope_freq_factors=None,
    inv_freq=None,
    mscale: float = 1.0,
):
    """Fused CoPE attention (Golovneva et al. 2024, the paper's listing).

    s_ij = <q_i, k_j> * scale; gates sigmoid(s_ij); positions p_ij = sum_{t=j..i} gates, clamped to
    npos_max - 1; z_ij interpolates the integer logits <q_i, e[p]>; out = softmax_j(s_ij + z_ij) v.
    scale_pos_logits=True is the authors' released code: softmax_j(s_ij + z_ij * scale).
    pos_emb: (npos_max, D) shared by the heads, or (H, npos_max, D); q's dtype.
    RoPE (applied to q and k at their positions before CoPE) only when rope_base or inv_freq is given.
    """
    D = _head_dim(q)
    rope = rope_base is not None or inv_freq is not None
    rdim = (D if rope_dim is None else rope_dim) if rope else 0
    if inv_freq is not None:
        inv_freq = _check_inv_freq(inv_freq, rdim)
    elif rope:
        inv_freq = rope_frequencies(
            D, rope_base=rope_base, rope_dim=rdim, rope_freq_scale=rope_freq_scale,
            rope_freq_factors=rope_freq_factors,
        )
    out = empty_like(q, tuple(q.shape))
    _native.cope_attention(
        q, k, v, pos_emb, out, scale=_scale(scale, D), scale_pos_logits=bool(scale_pos_logits),
        inv_freq=inv_freq, mscale=float(mscale), rope_style=rope_style, rope_dim=rdim, stream=cuda_stream_of(q),
        same_stream=on_current_torch_stream(q, k, v, pos_emb, out),
    )
    return out
