"""selfext-native: quantized GGUF language models far past their trained context (exact SelfExtend),
and models with contextual position encoding, on CPU and CUDA.

    >>> import selfext_native
    >>> selfext_native.backends()["cpu"]["simd_level"]
"""
from . import _native
from .errors import (
    ArgumentError,
    ArrayTypeError,
    BackendError,
    Cancelled,
    ContextOverflowError,
    GGUFError,
    OutOfMemoryError,
    SelfExtError,
    TemplateError,
)

__version__ = _native.__version__


def backends() -> dict:
    """What was compiled in and what is usable now.

    Returns ``{"version", "cpu": {brand, simd_level, simd_levels, features, threads},
    "cuda": {compiled, available, reason, architectures, runtime_version, driver_version, devices}}``;
    each CUDA device has name, compute_capability, total_memory and free_memory (bytes).
    """
    return {"version": __version__, "cpu": _native.cpu_report(), "cuda": _native.cuda_report()}


def set_num_threads(n: int) -> None:
    """Threads used by array-level ops (the LLM object takes its own ``n_threads``)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ArgumentError(f"n_threads must be a positive integer, got {n!r}")
    _native.set_num_threads(n)


def get_num_threads() -> int:
    return _native.get_num_threads()


def set_simd_level(name: str) -> None:
    """Force a SIMD level ("scalar", "avx2", "avx512", "avx512_vnni", "amx", "neon"); raises
    BackendError when this CPU lacks it. The environment variable SELFEXT_SIMD does the same at start."""
    _native.set_simd_level(name)


def __getattr__(name):
    # The LLM front end pulls in the tokenizer and Jinja2: import it only when asked for.
    if name == "LLM":
        from .llm import LLM

        return LLM
    raise AttributeError(f"module 'selfext_native' has no attribute {name!r}")


__all__ = [
    "LLM",
    "ArgumentError",
    "ArrayTypeError",
    "BackendError",
    "Cancelled",
    "ContextOverflowError",
    "GGUFError",
    "OutOfMemoryError",
    "SelfExtError",
    "TemplateError",
    "backends",
    "get_num_threads",
    "set_num_threads",
    "set_simd_level",
]
