"""`selfext_native.train`: small CoPE / RoPE decoders trained on the CoPE paper's synthetic tasks.

    python -m selfext_native.train --task flipflop --pos cope --steps 1500 --seed 0 --out runs/ff_cope
    python -m selfext_native.train.export runs/ff_cope --outtype f32 --out ff_cope.gguf

Modules: `tasks` (data, numpy only), `model` (the torch decoder), `trainer` (AdamW loop, evaluation,
CLI), `export` (GGUF writer and reader, docs/cope_gguf.md). torch is an optional dependency: it is
imported only by `model`, `trainer` and `export`, and its absence raises an ImportError that says so.
"""

from __future__ import annotations

import importlib


def require_torch():
    """The torch module, or an ImportError saying what to install."""
    try:
        return importlib.import_module("torch")
    except ImportError as e:
        raise ImportError("selfext_native.train needs PyTorch, an optional dependency: "
                          "pip install torch (CPU builds are enough for these models)") from e


__all__ = ["require_torch"]
