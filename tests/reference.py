"""Float64 NumPy references for the attention kernels, written plainly from the formulas of issue 4
(SelfExtend: Jin et al. 2024; CoPE: Golovneva et al. 2024, the paper's listing). Nothing here is shared
with the kernels: the full logit matrix of one head is built, masked and soft-maxed.

Conventions: q (T_q, H, D), k and v (T_k, H_kv, D); query h uses kv head h // (H // H_kv); the T_q
queries sit at positions T_k - T_q .. T_k - 1.
"""
from __future__ import annotations

import numpy as np


def inv_freq_ref(base: float, rope_dim: int, freq_scale: float = 1.0, factors=None) -> np.ndarray:
    """base**(-2i/rope_dim) * freq_scale / factors[i], i < rope_dim/2 (llama.cpp's conventions)."""
    i = np.arange(rope_dim // 2, dtype=np.float64)
    f = base ** (-2.0 * i / rope_dim) * freq_scale
    if factors is not None:
        f = f / np.asarray(factors, dtype=np.float64)
    return f


def rope_ref(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray, style: str, mscale: float = 1.0) -> np.ndarray:
    """Rotate x (T, ..., D) at positions pos (T,). Rotated dims are scaled by mscale; the rest pass."""
    x = np.asarray(x, dtype=np.float64)
    P = len(inv_freq)
    ang = np.asarray(pos, dtype=np.float64)[:, None] * inv_freq[None, :]  # (T, P)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (P,)
    c = (np.cos(ang) * mscale).reshape(shape)
    s = (np.sin(ang) * mscale).reshape(shape)
    y = x.copy()
    if style == "norm":
        ia, ib = np.arange(0, 2 * P, 2), np.arange(1, 2 * P, 2)
    elif style == "neox":
        ia, ib = np.arange(P), np.arange(P, 2 * P)
    else:
        raise ValueError(style)
    a, b = x[..., ia], x[..., ib]
    y[..., ia] = a * c - b * s
    y[..., ib] = a * s + b * c
    return y


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    m = np.max(logits, axis=-1, keepdims=True)
    e = np.exp(logits - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def attention_ref(q, k, v, scale: float, mask_value_fn=None) -> np.ndarray:
    """Plain causal attention (bottom-right aligned) on already rotated inputs."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    Tq, H, D = q.shape
    Tk, Hkv, _ = k.shape
    i = np.arange(Tk - Tq, Tk)[:, None]
    j = np.arange(Tk)[None, :]
    out = np.empty((Tq, H, D))
    for h in range(H):
        kv = h // (H // Hkv)
        logits = q[:, h] @ k[:, kv].T * scale
        logits = np.where(j <= i, logits, -np.inf)
        out[:, h] = _softmax_rows(logits) @ v[:, kv]
    return out


def self_extend_ref(q, k, v, *, group, window, inv_freq, style="norm", mscale=1.0, scale=None) -> np.ndarray:
    """SelfExtend: for i - j < W positions (i, j); else (i//G + W - W//G, j//G); one softmax."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    Tq, H, D = q.shape
    Tk, Hkv, _ = k.shape
    G, W = group, window
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    i = np.arange(Tk - Tq, Tk)
    j = np.arange(Tk)
    q_n = rope_ref(q, i, inv_freq, style, mscale)
    k_n = rope_ref(k, j, inv_freq, style, mscale)
    q_g = rope_ref(q, i // G + W - W // G, inv_freq, style, mscale)
    k_g = rope_ref(k, j // G, inv_freq, style, mscale)
    rel = i[:, None] - j[None, :]
    out = np.empty((Tq, H, D))
    for h in range(H):
        kv = h // (H // Hkv)
        neighbor = q_n[:, h] @ k_n[:, kv].T * scale
        grouped = q_g[:, h] @ k_g[:, kv].T * scale
        logits = np.where(rel < W, neighbor, grouped)
        logits = np.where(rel >= 0, logits, -np.inf)
        out[:, h] = _softmax_rows(logits) @ v[:, kv]
    return out


def cope_ref(q, k, v, pos_emb, *, scale=None, scale_pos_logits=False, inv_freq=None, style="norm",
             mscale=1.0) -> np.ndarray:
    """CoPE, the paper's listing; scale_pos_logits: z multiplied by scale too (the released code)."""
    q, k, v, e = (np.asarray(a, dtype=np.float64) for a in (q, k, v, pos_emb))
    Tq, H, D = q.shape
    Tk, Hkv, _ = k.shape
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    i = np.arange(Tk - Tq, Tk)
    j = np.arange(Tk)
    if inv_freq is not None:
        q = rope_ref(q, i, inv_freq, style, mscale)
        k = rope_ref(k, j, inv_freq, style, mscale)
    npos = e.shape[-2]
    causal = j[None, :] <= i[:, None]
    out = np.empty((Tq, H, D))
    for h in range(H):
        kv = h // (H // Hkv)
        eh = e if e.ndim == 2 else e[h]
        s = q[:, h] @ k[:, kv].T * scale
        gates = np.where(causal, 1.0 / (1.0 + np.exp(-s)), 0.0)
        p = np.flip(np.cumsum(np.flip(gates, axis=1), axis=1), axis=1)  # p_ij = sum_{t=j..i} g_it
        p = np.minimum(p, npos - 1)
        pos_logits = q[:, h] @ eh.T  # (Tq, npos): <q_i, e[t]>
        lo = np.floor(p)
        frac = p - lo
        hi = np.ceil(p)
        z = frac * np.take_along_axis(pos_logits, hi.astype(np.int64), axis=1) + (1 - frac) * np.take_along_axis(
            pos_logits, lo.astype(np.int64), axis=1
        )
        logits = s + (z * scale if scale_pos_logits else z)
        logits = np.where(causal, logits, -np.inf)
        out[:, h] = _softmax_rows(logits) @ v[:, kv]
    return out
