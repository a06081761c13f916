"""The package foundation: import, backend report, array interop (buffer protocol and DLPack), typed
errors, and exceptions from worker threads."""
import numpy as np
import pytest

import selfext_native
from selfext_native import ops


def rms_norm_ref(x, w, eps):
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * np.asarray(w, dtype=np.float64)


def test_backends_report():
    b = selfext_native.backends()
    assert b["version"] == selfext_native.__version__
    cpu = b["cpu"]
    assert cpu["simd_level"] in cpu["simd_levels"]
    assert "scalar" in cpu["simd_levels"]
    assert cpu["threads"] >= 1
    cuda = b["cuda"]
    assert isinstance(cuda["compiled"], bool) and isinstance(cuda["available"], bool)
    if not cuda["available"]:
        assert cuda["reason"], "an unavailable CUDA backend must say why"
    else:
        assert cuda["devices"] and cuda["devices"][0]["name"]


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float16, 2e-3)])
def test_rms_norm_numpy(rng, dtype, tol):
    x = rng.standard_normal((37, 200)).astype(dtype)
    w = rng.standard_normal(200).astype(np.float32)
    out = np.full_like(x, np.nan)
    ops.rms_norm(x, w, 1e-5, out=out)
    ref = rms_norm_ref(x, w, 1e-5)
    assert np.isfinite(out).all()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < tol


def test_rms_norm_torch_cpu_returns_torch(rng):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(rng.standard_normal((5, 64)).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal(64).astype(np.float32))
    y = ops.rms_norm(x, w, 1e-6)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    ref = rms_norm_ref(x.numpy(), w.numpy(), 1e-6)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-6)
    # bfloat16 crosses through DLPack only (NumPy has no bfloat16)
    yb = ops.rms_norm(x.to(torch.bfloat16), w, 1e-6)
    assert yb.dtype == torch.bfloat16
    refb = rms_norm_ref(x.to(torch.bfloat16).float().numpy(), w.numpy(), 1e-6)
    assert np.abs(yb.float().numpy() - refb).max() < 0.05 * np.abs(refb).max()


def test_rms_norm_strided_view_of_torch_buffer(rng):
    """A DLPack tensor with a storage offset (a row slice) is read from the right place."""
    torch = pytest.importorskip("torch")
    big = torch.from_numpy(rng.standard_normal((10, 32)).astype(np.float32))
    part = big[3:7]
    assert part.storage_offset() > 0
    y = ops.rms_norm(part, torch.ones(32), 1e-6)
    np.testing.assert_allclose(y.numpy(), rms_norm_ref(part.numpy(), np.ones(32), 1e-6), rtol=1e-5)


def test_wrong_dtype_is_type_error(rng):
    x = rng.standard_normal((4, 8))  # float64
    with pytest.raises(selfext_native.ArrayTypeError, match="x has dtype float64"):
        ops.rms_norm(x, np.ones(8, np.float32), out=np.empty((4, 8), np.float64))
    with pytest.raises(TypeError):  # ArrayTypeError is a TypeError
        ops.rms_norm(x.astype(np.float32), np.ones(8, np.int32))


def test_wrong_shape_is_value_error():
    x = np.ones((4, 8), np.float32)
    with pytest.raises(selfext_native.ArgumentError, match=r"weight must have shape \(8,\)"):
        ops.rms_norm(x, np.ones(9, np.float32))
    with pytest.raises(ValueError, match="out must have the shape of x"):
        ops.rms_norm(x, np.ones(8, np.float32), out=np.empty((4, 9), np.float32))
    with pytest.raises(ValueError, match="must be 1-D or 2-D"):
        ops.rms_norm(np.ones((2, 2, 8), np.float32), np.ones(8, np.float32))


def test_non_contiguous_is_value_error():
    x = np.ones((8, 4), np.float32).T  # a transposed view
    with pytest.raises(selfext_native.ArgumentError, match="x must be contiguous"):
        ops.rms_norm(x, np.ones(8, np.float32), out=np.empty((4, 8), np.float32))


def test_non_contiguous_torch_is_value_error():
    torch = pytest.importorskip("torch")
    x = torch.ones(8, 4).t()
    with pytest.raises(ValueError, match="contiguous"):
        ops.rms_norm(x, torch.ones(8), out=torch.empty(4, 8))


def test_read_only_output_is_rejected():
    x = np.ones((2, 8), np.float32)
    out = np.empty((2, 8), np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out"):
        ops.rms_norm(x, np.ones(8, np.float32), out=out)


def test_not_an_array_is_type_error():
    with pytest.raises(selfext_native.ArrayTypeError, match="x must be an array"):
        selfext_native._native.rms_norm(object(), np.ones(8, np.float32), np.ones(8, np.float32), 1e-6)


class _ForeignDevice:
    """A DLPack producer on a device we do not support (OpenCL)."""

    def __dlpack_device__(self):
        return (4, 0)

    def __dlpack__(self, **kwargs):
        raise AssertionError("must not be consumed")


def test_unsupported_device_is_type_error():
    with pytest.raises(selfext_native.ArrayTypeError, match="only CPU and CUDA"):
        selfext_native._native.rms_norm(_ForeignDevice(), np.ones(8, np.float32), np.ones(8, np.float32), 1e-6)


def test_bad_eps_is_value_error():
    with pytest.raises(selfext_native.ArgumentError, match="eps"):
        ops.rms_norm(np.ones((2, 8), np.float32), np.ones(8, np.float32), eps=-1.0)


def test_worker_exception_reaches_python():
    if selfext_native.get_num_threads() < 2:
        selfext_native.set_num_threads(2)
    with pytest.raises(selfext_native.ArgumentError, match="failed on purpose in a worker thread"):
        selfext_native._native._raise_in_worker(64)
    # The pool stays usable afterwards.
    x = np.ones((64, 16), np.float32)
    np.testing.assert_allclose(ops.rms_norm(x, np.ones(16, np.float32)), np.ones((64, 16)), rtol=1e-5)


def test_simd_levels_forced_and_refused():
    cpu = selfext_native.backends()["cpu"]
    original = cpu["simd_level"]
    try:
        for level in cpu["simd_levels"]:
            selfext_native.set_simd_level(level)
            assert selfext_native.backends()["cpu"]["simd_level"] == level
        with pytest.raises(selfext_native.ArgumentError, match="unknown SIMD level"):
            selfext_native.set_simd_level("sse9")
        missing = [lv for lv in ("avx2", "avx512", "avx512_vnni", "neon") if lv not in cpu["simd_levels"]]
        for level in missing:
            with pytest.raises(selfext_native.BackendError, match="not available"):
                selfext_native.set_simd_level(level)
    finally:
        selfext_native.set_simd_level(original)


def test_set_num_threads_validation():
    n = selfext_native.get_num_threads()
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(selfext_native.ArgumentError, match="n_threads"):
            selfext_native.set_num_threads(bad)
    selfext_native.set_num_threads(1)
    assert selfext_native.get_num_threads() == 1
    selfext_native.set_num_threads(n)
