"""The foundation's CUDA contract, checked on a GPU: the backend report names the device, a torch CUDA
tensor crosses DLPack and the op runs on the caller's (non-default) stream, and arrays of mixed devices
are refused with ArrayTypeError."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import selfext_native  # noqa: E402
from selfext_native import ops  # noqa: E402
from selfext_native.errors import ArrayTypeError  # noqa: E402

pytestmark = pytest.mark.cuda


def test_backends_names_the_gpu():
    cuda = selfext_native.backends()["cuda"]
    assert cuda["compiled"] and cuda["available"], cuda["reason"]
    names = [d["name"] for d in cuda["devices"]]
    assert torch.cuda.get_device_name(0) in names
    assert cuda["devices"][0]["compute_capability"] == torch.cuda.get_device_capability(0)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_rms_norm_on_a_side_stream(rng, dtype, tol):
    """The input is produced on a non-default stream and the op is called under it: the op must run
    on that stream (DLPack: the consumer names it), after the producer's work, and equal torch's result."""
    side = torch.cuda.Stream()
    x0 = torch.from_numpy(rng.standard_normal((257, 1000)).astype(np.float32)).cuda()
    w = torch.from_numpy(rng.standard_normal(1000).astype(np.float32)).cuda()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(20_000_000)  # keep the side stream busy: a default-stream op would race ahead
        x = (x0 * 3.0).to(dtype)
        y = ops.rms_norm(x, w, 1e-5)
        x64 = x.to(torch.float64)
        ref = x64 * torch.rsqrt((x64 * x64).mean(-1, keepdim=True) + 1e-5) * w.to(torch.float64)
        err = (torch.linalg.norm(y.to(torch.float64) - ref) / torch.linalg.norm(ref))
    side.synchronize()
    assert y.dtype == dtype and y.is_cuda
    assert err.item() < tol


def test_mixed_devices_are_refused(rng):
    x = torch.from_numpy(rng.standard_normal((4, 64)).astype(np.float32))
    w = torch.ones(64)
    with pytest.raises(ArrayTypeError):
        ops.rms_norm(x.cuda(), w, 1e-5)  # weight on the CPU
    with pytest.raises(ArrayTypeError):
        ops.rms_norm(x.cuda(), w.cuda(), 1e-5, out=torch.empty(4, 64))  # out on the CPU
