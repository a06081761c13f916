"""RoPE frequencies from a GGUF file's settings: the one place they are computed.

The native model and the float64 test reference both take their per-pair inverse frequencies from
`rope_inv_freq`, so a file's scaling settings (linear, YaRN, Llama-3.1 frequency factors) are
interpreted once. Conventions follow llama.cpp's `ggml_rope_ext`, because GGUF files are written for
it: pair i (0 <= i < dim/2) of a head rotates by the angle `position * inv_freq[i]`, and under YaRN the
rotated vector is also scaled by `attn_factor` (llama.cpp multiplies cos and sin by it, for Q and K
alike, so attention logits grow by attn_factor**2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

ROPE_STYLES = ("norm", "neox")
ROPE_SCALING_TYPES = ("none", "linear", "yarn")


@dataclass(frozen=True)
class RopeConfig:
    freq_base: float = 10000.0
    dim: int = 0                         # rotated dims per head (rope.dimension_count), even, <= head_dim
    style: str = "norm"                  # "norm": pairs (2i, 2i+1); "neox": pairs (i, i + dim/2)
    scaling_type: str = "none"           # "none" | "linear" | "yarn"
    scaling_factor: float = 1.0          # context extension factor s (positions are divided by s)
    yarn_orig_ctx: int = 0               # training context the YaRN ramp is measured against
    yarn_beta_fast: float = 32.0         # rotations over orig ctx above which a pair is extrapolated
    yarn_beta_slow: float = 1.0          # rotations below which a pair is fully interpolated
    yarn_ext_factor: float = 1.0         # mix weight of the extrapolation ramp (llama.cpp ext_factor)
    yarn_attn_factor: float = 1.0        # file's extra magnitude factor (llama.cpp attn_factor)
    freq_factors: Optional[np.ndarray] = None  # (dim/2,) float, divides each pair's frequency (Llama-3.1)


def _yarn_corr_dim(dim: int, orig_ctx: int, n_rot: float, base: float) -> float:
    # The pair index whose wavelength completes n_rot full turns over orig_ctx positions:
    # solve orig_ctx / (2*pi*base^(2i/dim)) = n_rot for i.
    return dim * math.log(orig_ctx / (n_rot * 2.0 * math.pi)) / (2.0 * math.log(base))


def yarn_ramp_bounds(cfg: RopeConfig) -> tuple[float, float]:
    """Pair indices [low, high] between which YaRN blends interpolation into extrapolation.

    Pairs below `low` (fast, many turns within the training context) keep their original frequency;
    pairs above `high` (slow) are interpolated by the scale factor. llama.cpp floors/ceils the bounds
    and clamps them to [0, dim - 1]; we do the same so both agree on every pair.
    """
    low = math.floor(_yarn_corr_dim(cfg.dim, cfg.yarn_orig_ctx, cfg.yarn_beta_fast, cfg.freq_base))
    high = math.ceil(_yarn_corr_dim(cfg.dim, cfg.yarn_orig_ctx, cfg.yarn_beta_slow, cfg.freq_base))
    return float(max(0, low)), float(min(cfg.dim - 1, high))


def rope_inv_freq(cfg: RopeConfig) -> tuple[np.ndarray, float]:
    """Inverse frequencies (dim/2,) float64 and the magnitude factor for the rotated Q and K.

    Angle of pair i at position p: p * inv_freq[i]; the rotated vector is multiplied by attn_factor.
    """
    if cfg.dim == 0:
        return np.zeros(0), 1.0  # no RoPE (a model with contextual position encoding only)
    if cfg.dim < 0 or cfg.dim % 2:
        raise ValueError(f"rope dim must be an even number >= 0, got {cfg.dim}")
    if not (math.isfinite(cfg.freq_base) and cfg.freq_base > 1.0):
        raise ValueError(f"rope freq_base must be finite and > 1, got {cfg.freq_base}")
    if cfg.scaling_type not in ROPE_SCALING_TYPES:
        raise ValueError(f"rope scaling type {cfg.scaling_type!r} is not one of {ROPE_SCALING_TYPES}")
    half = cfg.dim // 2
    i = np.arange(half, dtype=np.float64)
    theta_extrap = cfg.freq_base ** (-2.0 * i / cfg.dim)
    if cfg.freq_factors is not None:
        ff = np.asarray(cfg.freq_factors, dtype=np.float64).reshape(-1)
        if ff.shape != (half,) or not np.all(np.isfinite(ff)) or np.any(ff <= 0):
            raise ValueError(f"rope freq_factors must be {half} finite positive values, got shape {ff.shape}")
        theta_extrap = theta_extrap / ff

    if cfg.scaling_type == "none" or cfg.scaling_factor == 1.0:
        return theta_extrap, 1.0
    s = float(cfg.scaling_factor)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"rope scaling factor must be finite and > 0, got {s}")
    theta_interp = theta_extrap / s
    if cfg.scaling_type == "linear":
        return theta_interp, 1.0

    # YaRN (Peng et al. 2023, eqs. 17-19 in llama.cpp's form): per pair, mix extrapolated and
    # interpolated frequencies with a weight that ramps from 1 (fast pairs) down to 0 (slow pairs).
    if cfg.yarn_orig_ctx <= 0:
        raise ValueError(f"YaRN needs the original context length, got {cfg.yarn_orig_ctx}")
    low, high = yarn_ramp_bounds(cfg)
    y = (i - low) / max(0.001, high - low)
    ramp = 1.0 - np.clip(y, 0.0, 1.0)
    mix = ramp * cfg.yarn_ext_factor
    inv_freq = theta_interp * (1.0 - mix) + theta_extrap * mix
    attn_factor = cfg.yarn_attn_factor
    if cfg.yarn_ext_factor != 0.0:
        # sqrt(1/t) = 0.1 ln(s) + 1 (YaRN eq. 22): keeps attention entropy as positions compress.
        attn_factor *= 1.0 + 0.1 * math.log(s)
    return inv_freq, float(attn_factor)
