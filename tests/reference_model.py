"""Float64 NumPy reference forward pass of a GGUF llama/qwen2 model, with SelfExtend.

Written plainly from the architecture as GGUF stores it, for checking the native model:
- llama.cpp's converter permutes llama's Q/K weight rows so that RoPE rotates adjacent pairs
  (x[2i], x[2i+1]) ("norm" style); qwen2 files keep half-split pairs (x[i], x[i + d/2]) ("neox").
- SelfExtend (Jin et al. 2024): for i - j < W the pair keeps positions (i, j); otherwise the query sits
  at floor(i/G) + W - floor(W/G) and the key at floor(j/G). One softmax over the merged logits.
Inverse frequencies come from selfext_native.rope, the one place a file's RoPE settings are read.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Optional

import numpy as np

import gguf
from gguf.constants import GGMLQuantizationType as QT


def import_selfext(name: str):
    """Import selfext_native.<name>; without a built `_native`, load the pure-Python module alone.

    The loader, RoPE and errors modules need no native code, so their tests run before the
    extension is built: the package's __init__ (which imports _native) is then bypassed.
    """
    try:
        return importlib.import_module(f"selfext_native.{name}")
    except ImportError as e:
        # Only a missing native extension is bypassed; any other import failure is a real bug.
        if "_native" not in str(e) or hasattr(sys.modules.get("selfext_native"), "_native"):
            raise
        spec = importlib.util.find_spec("selfext_native")
        if spec is None or not spec.submodule_search_locations:
            raise
        pkg = types.ModuleType("selfext_native")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["selfext_native"] = pkg
        for stale in [m for m in sys.modules if m.startswith("selfext_native.")]:
            del sys.modules[stale]
        return importlib.import_module(f"selfext_native.{name}")


gguf_model = import_selfext("gguf_model")
rope_mod = import_selfext("rope")

FLOAT_TYPES = {int(QT.F32), int(QT.F16), int(QT.BF16)}
Q8_BLOCK = 32


K_QUANT_TYPES = (10, 11, 12, 13, 14)  # Q2_K .. Q6_K


def dequantize(t) -> np.ndarray:
    """A TensorInfo's weights as float64, in its row-major shape."""
    flat = gguf.quants.dequantize(t.data, QT(t.qtype))
    return np.asarray(flat, dtype=np.float64).reshape(t.shape)


def quantize_q8(x: np.ndarray, block: int = Q8_BLOCK) -> np.ndarray:
    """8-bit activation emulation: per block of `block` elements of the last axis,
    d = max|x| / 127, q = round(x / d), back to q * d (all in float64)."""
    shp = x.shape
    xb = x.reshape(*shp[:-1], shp[-1] // block, block)
    d = np.abs(xb).max(axis=-1, keepdims=True) / 127.0
    safe = np.where(d == 0, 1.0, d)
    q = np.round(xb / safe)
    return (q * d).reshape(shp)


def rope_positions(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray, attn_factor: float,
                   style: str) -> np.ndarray:
    """Rotate x (T, n_heads, head_dim) at positions pos (T,); the first 2*len(inv_freq) dims rotate."""
    half = len(inv_freq)
    ang = pos[:, None].astype(np.float64) * inv_freq[None, :]          # (T, half)
    c = (np.cos(ang) * attn_factor)[:, None, :]
    s = (np.sin(ang) * attn_factor)[:, None, :]
    out = x.copy()
    if style == "norm":
        a, b = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
        out[..., 0:2 * half:2] = a * c - b * s
        out[..., 1:2 * half:2] = a * s + b * c
    elif style == "neox":
        a, b = x[..., :half], x[..., half:2 * half]
        out[..., :half] = a * c - b * s
        out[..., half:2 * half] = a * s + b * c
    else:
        raise ValueError(f"unknown rope style {style!r}")
    return out


def selfextend_positions(T_q: int, T_k: int, group: int, window: int):
    """Query/key positions for the neighbor and grouped branches and the neighbor mask (T_q, T_k).

    The T_q queries are the last T_q of the T_k positions (causal)."""
    i = np.arange(T_k - T_q, T_k)
    j = np.arange(T_k)
    q_grp = i // group + window - window // group
    k_grp = j // group
    neighbor = (i[:, None] - j[None, :]) < window
    return i, j, q_grp, k_grp, neighbor


class ReferenceModel:
    """Dequantized float64 weights of one file, and the forward pass over them."""

    def __init__(self, path: str):
        self.desc = gguf_model.load_model_description(path)
        self.w = {name: dequantize(t) for name, t in self.desc.tensors.items()}
        self.qtype = {name: t.qtype for name, t in self.desc.tensors.items()}
        self.inv_freq, self.attn_factor = self.desc.rope_inv_freq()
        self._w16: dict = {}

    def _mm(self, x: np.ndarray, name: str, act_quant: Optional[str]) -> np.ndarray:
        # y = x W^T; W is (out, in) as GGUF stores it (ggml's ne0 = in is contiguous).
        if act_quant == "q8" and self.qtype[name] not in FLOAT_TYPES:
            # K-quant weights meet 256-element activation blocks (llama.cpp's Q8_K), the others 32.
            x = quantize_q8(x, 256 if self.qtype[name] in K_QUANT_TYPES else Q8_BLOCK)
        if act_quant == "f16":  # the tensor-core products: activations and dequantized weights in float16
            w16 = self._w16.get(name)
            if w16 is None:
                w16 = self._w16[name] = _round16(self.w[name])
            return _round16(x) @ w16.T
        return x @ self.w[name].T

    def _rmsnorm(self, x: np.ndarray, name: str) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.desc.rms_eps) * self.w[name]

    def _cope_logits(self, q, k, e, scale, causal):
        """Contextual position encoding (arXiv 2405.18719, Sec. 3), plainly: gates of the scaled logits,
        positions as suffix sums of gates clamped to npos_max - 1, position logits interpolated from the
        integer ones <q_i, e[p]>, added unscaled (paper) or scaled with the content (authors' code)."""
        cope = self.desc.cope
        raw = np.einsum("thd,shd->hts", q, k)                              # (H, T_q, T_k) <q_i, k_j>
        gates = np.where(causal[None], 1.0 / (1.0 + np.exp(-raw * scale)), 0.0)
        pos = np.flip(np.cumsum(np.flip(gates, -1), -1), -1)              # p_ij = sum_{t=j..i} g_it
        pos = np.minimum(pos, cope.npos_max - 1)
        ints = np.einsum("thd,hpd->htp", q, e)                            # (H, T_q, npos) <q_i, e[p]>
        lo = np.floor(pos)
        frac = pos - lo
        hi = np.minimum(lo + (frac > 0), cope.npos_max - 1).astype(np.int64)
        z = frac * np.take_along_axis(ints, hi, -1) + (1 - frac) * np.take_along_axis(ints, lo.astype(np.int64), -1)
        return (raw + z) * scale if cope.scale_pos_logits else raw * scale + z

    def forward(self, tokens, *, group: int = 1, window: Optional[int] = None,
                act_quant: Optional[str] = None) -> np.ndarray:
        """Logits (T, n_vocab) float64 for tokens at positions 0..T-1.

        group/window: SelfExtend's G and W (G = 1 or W >= T is plain RoPE attention).
        act_quant: None, or "q8" to round each activation entering a matmul with an integer-format
        weight to 8 bits per 32-element block (what quantized dot-product kernels do), or "f16" to round
        every product's activations and weights, q, K, V and the attention output to float16 (what the
        GPU's prefill path stores and multiplies).
        """
        d = self.desc
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0 or tokens.min() < 0 or tokens.max() >= d.n_vocab:
            raise ValueError(f"tokens must be a non-empty 1-D array of ids below {d.n_vocab}")
        if act_quant not in (None, "q8", "f16"):
            raise ValueError(f"act_quant must be None, 'q8' or 'f16', got {act_quant!r}")
        # "f16": also q, K, V (the cache) and the attention output rounded to float16, as the GPU stores them
        r16 = _round16 if act_quant == "f16" else (lambda a: a)
        T, H, Hkv, hd = tokens.size, d.n_head, d.n_head_kv, d.head_dim
        if window is None:
            window = T
        if group < 1 or window < 1:
            raise ValueError(f"need group >= 1 and window >= 1, got {group}, {window}")
        i, j, q_grp, k_grp, neighbor = selfextend_positions(T, T, group, window)
        causal = j[None, :] <= i[:, None]
        style = d.rope.style

        x = self.w["token_embd.weight"][tokens]                           # (T, n_embd)
        for layer in range(d.n_layer):
            p = f"blk.{layer}."
            h = self._rmsnorm(x, p + "attn_norm.weight")
            q = self._mm(h, p + "attn_q.weight", act_quant)               # (T, H*hd)
            k = self._mm(h, p + "attn_k.weight", act_quant)               # (T, Hkv*hd), K before RoPE
            v = self._mm(h, p + "attn_v.weight", act_quant)
            if d.has_qkv_bias:
                q = q + self.w[p + "attn_q.bias"]
                k = k + self.w[p + "attn_k.bias"]
                v = v + self.w[p + "attn_v.bias"]
            q, k, v = r16(q).reshape(T, H, hd), r16(k).reshape(T, Hkv, hd), r16(v).reshape(T, Hkv, hd)
            rot = lambda x_, pos: rope_positions(x_, pos, self.inv_freq, self.attn_factor, style)  # noqa: E731
            qn, kn = rot(q, i), rot(k, j)
            qg, kg = rot(q, q_grp), rot(k, k_grp)
            rep = H // Hkv                                                 # GQA: query head h reads kv head h // rep
            kn, kg, vv = (np.repeat(a, rep, axis=1) for a in (kn, kg, v))
            scale = 1.0 / np.sqrt(hd)
            if d.cope is not None:
                e = self.w[p + "cope_pos.weight"]
                e = e if e.ndim == 3 else np.broadcast_to(e, (H,) + e.shape)   # (H, npos, hd)
                s = np.where(causal[None], self._cope_logits(qn, kn, e, scale, causal), -np.inf)
                s = s - s.max(axis=-1, keepdims=True)
                pr = np.exp(s)
                pr /= pr.sum(axis=-1, keepdims=True)
                o = np.einsum("hts,shd->thd", pr, vv).reshape(T, H * hd)
                x = x + self._mm(o, p + "attn_output.weight", act_quant)
                h = self._rmsnorm(x, p + "ffn_norm.weight")
                g = self._mm(h, p + "ffn_gate.weight", act_quant)
                u = self._mm(h, p + "ffn_up.weight", act_quant)
                x = x + self._mm(g / (1.0 + np.exp(-g)) * u, p + "ffn_down.weight", act_quant)
                continue
            s_n = np.einsum("thd,shd->hts", qn, kn) * scale               # (H, T_q, T_k)
            s_g = np.einsum("thd,shd->hts", qg, kg) * scale
            s = np.where(neighbor[None], s_n, s_g)
            s = np.where(causal[None], s, -np.inf)
            s = s - s.max(axis=-1, keepdims=True)
            pr = np.exp(s)
            pr /= pr.sum(axis=-1, keepdims=True)
            o = r16(np.einsum("hts,shd->thd", pr, vv).reshape(T, H * hd))
            x = x + self._mm(o, p + "attn_output.weight", act_quant)

            h = self._rmsnorm(x, p + "ffn_norm.weight")
            g = self._mm(h, p + "ffn_gate.weight", act_quant)
            u = self._mm(h, p + "ffn_up.weight", act_quant)
            silu = g / (1.0 + np.exp(-g))
            x = x + self._mm(silu * u, p + "ffn_down.weight", act_quant)

        h = self._rmsnorm(x, "output_norm.weight")
        head = "token_embd.weight" if d.tied_output else "output.weight"
        return self._mm(h, head, act_quant)


def _round16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float64)


_CACHE: dict[str, ReferenceModel] = {}


def reference_logits(path: str, tokens, **kw) -> np.ndarray:
    """Logits (T, n_vocab) float64 of the model in `path` (weights dequantized once per path)."""
    m = _CACHE.get(path)
    if m is None:
        m = _CACHE[path] = ReferenceModel(path)
    return m.forward(tokens, **kw)
