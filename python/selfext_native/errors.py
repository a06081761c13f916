"""Exception types of selfext-native.

Native code throws typed C++ exceptions; the bindings translate each one into the class of the same
name here. Every class also derives from the matching builtin (ValueError, TypeError, ...), so callers
that catch the builtin keep working.
"""


class SelfExtError(Exception):
    """Base class of every error raised by selfext-native."""


class ArgumentError(SelfExtError, ValueError):
    """A parameter is out of range or inconsistent with another one."""


class ArrayTypeError(SelfExtError, TypeError):
    """An array has the wrong dtype, device or kind."""


class GGUFError(SelfExtError, ValueError):
    """A GGUF file is malformed, unsupported or inconsistent."""


class ContextOverflowError(SelfExtError, ValueError):
    """A prompt or generation does not fit in the usable context."""


class TemplateError(SelfExtError, ValueError):
    """A chat template failed to render or tried something the sandbox forbids."""


class OutOfMemoryError(SelfExtError, MemoryError):
    """An allocation (host or device) failed or would exceed the memory available."""


class BackendError(SelfExtError, RuntimeError):
    """A backend failed at run time (CUDA error, unsupported SIMD level, internal error)."""


class Cancelled(SelfExtError, KeyboardInterrupt):
    """Native work was interrupted by the user (Ctrl-C)."""
