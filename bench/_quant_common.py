"""Helpers only bench/quant_cpu.py needs: NumPy's BLAS (its kernel name and thread count, through the
bundled OpenBLAS), the last-level cache size, random valid GGUF blocks. Device, commit, timer and JSON
come from bench/_common.py."""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np


def last_level_cache_bytes() -> int:
    best = 0
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            size = open(os.path.join(d, "size")).read().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
        best = max(best, int(size.rstrip("KMG")) * mult)
    return best or 32 << 20


class Blas:
    """NumPy's OpenBLAS: the kernel it picked at load (DYNAMIC_ARCH) and its thread count, through
    the bundled library's own entry points; np.show_config's line when those are not there."""

    def __init__(self):
        self.lib = None
        self.prefix = ""
        libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "*openblas*.so*"))
        for path in libs:
            lib = ctypes.CDLL(path)
            for prefix, suffix in (("scipy_openblas_", "64_"), ("openblas_", "")):
                if hasattr(lib, prefix + "get_corename" + suffix):
                    self.lib, self.prefix, self.suffix = lib, prefix, suffix
                    break
            if self.lib:
                break

    def kernel(self) -> str:
        if self.lib:
            f = getattr(self.lib, self.prefix + "get_corename" + self.suffix)
            f.restype = ctypes.c_char_p
            cfg = getattr(self.lib, self.prefix + "get_config" + self.suffix)
            cfg.restype = ctypes.c_char_p
            return f"OpenBLAS core {f().decode()} ({cfg().decode().strip()})"
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')} ({blas.get('openblas configuration', '')})"

    def set_threads(self, n: int) -> bool:
        if not self.lib:
            return False
        getattr(self.lib, self.prefix + "set_num_threads" + self.suffix)(ctypes.c_int(n))
        return True


# Offsets of the fp16 scale fields of each GGML block (ggml-common.h); random bytes elsewhere are valid.
FP16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
               "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def random_weights(name: str, rows: int, cols: int, block_size: int, block_bytes: int, rng) -> np.ndarray:
    """rows x cols of `name` as GGUF bytes: random codes and sub-scales, small finite fp16 scales."""
    if name == "F32":
        return rng.standard_normal(rows * cols, dtype=np.float32).view(np.uint8)
    if name in ("F16", "BF16"):
        f = rng.standard_normal(rows * cols, dtype=np.float32)
        return (f.astype(np.float16) if name == "F16" else (f.view(np.uint32) >> 16).astype(np.uint16)).view(np.uint8)
    nb = rows * cols // block_size
    raw = rng.integers(0, 256, size=(nb, block_bytes), dtype=np.uint8)
    scale = (rng.random(nb, dtype=np.float32) * 0.01 + 0.001).astype(np.float16).view(np.uint8).reshape(nb, 2)
    for off in FP16_FIELDS[name]:
        raw[:, off:off + 2] = scale
    return raw.reshape(-1)
