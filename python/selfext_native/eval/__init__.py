"""Long-context evaluation: passkey retrieval and windowed perplexity, callable from Python and from
`selfext passkey` / `selfext perplexity`.

    from selfext_native.eval import run_passkey, run_perplexity
    r = run_passkey(None, n_ctx=16384, trials=10, seed=0, self_extend="auto")   # None = default model
    print(r.accuracy, r.ci_low, r.ci_high)
"""
from __future__ import annotations

import math

from .passkey import PasskeyResult, build_prompt, run_passkey, wilson_interval
from .perplexity import PerplexityResult, run_perplexity


def ntk_freq_base(freq_base: float, scale: float, rope_dim: int) -> float:
    """NTK-aware RoPE base for a context extension by `scale` (bloc97's rule): base * s**(d/(d-2)).

    It stretches the lowest frequency by s (so the longest wavelength covers s times the trained
    context) while leaving the highest almost unchanged; pass the result as `rope_freq_base`."""
    if not (math.isfinite(scale) and scale >= 1.0):
        raise ValueError(f"scale must be finite and >= 1, got {scale}")
    if rope_dim < 4 or rope_dim % 2:
        raise ValueError(f"rope_dim must be even and >= 4, got {rope_dim}")
    return float(freq_base) * scale ** (rope_dim / (rope_dim - 2))


__all__ = ["run_passkey", "PasskeyResult", "build_prompt", "wilson_interval", "run_perplexity",
           "PerplexityResult", "ntk_freq_base"]
