"""Host time per call of the CUDA attention bindings, and of the DLPack steps each tensor argument takes
(python3 scripts/binding_overhead.py). Tiny shapes, so the GPU work is a few microseconds and the
host's launch work is what the loop measures (calls queue faster than they run only if the host is
the faster side; the GPU time of one call is printed beside it)."""
import time

import torch

from selfext_native import _native
from selfext_native.attention import cope_attention


def per_call_us(fn, n=300):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return host


def main():
    T, H, D = 64, 4, 64
    q, k, v = (torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    pe = torch.randn(64, D, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    s = torch.cuda.current_stream().cuda_stream
    sd = s if s != 0 else 1  # DLPack's name for the legacy default stream
    rows = {
        "cope_attention_cuda (5 tensors)": lambda: _native.cope_attention_cuda(q, k, v, pe, out, D ** -0.5, False, s),
        "cope_attention_cuda (5 tensors, same_stream=True)": lambda: _native.cope_attention_cuda(
            q, k, v, pe, out, D ** -0.5, False, s, same_stream=True),
        "selfext_native.attention.cope_attention (public API)": lambda: cope_attention(q, k, v, pe),
        "t.__dlpack_device__()": lambda: q.__dlpack_device__(),
        "t.__dlpack__(stream=current)": lambda: q.__dlpack__(stream=sd),
        "t.__dlpack__(stream=current, max_version=(1, 1))": lambda: q.__dlpack__(stream=sd, max_version=(1, 1)),
        "t.__dlpack__(stream=-1)": lambda: q.__dlpack__(stream=-1),
        "torch.cuda.current_stream().cuda_stream": lambda: torch.cuda.current_stream().cuda_stream,
    }
    for name, fn in rows.items():
        print(f"{per_call_us(fn):8.1f} us  {name}")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(20):
            _native.cope_attention_cuda(q, k, v, pe, out, D ** -0.5, False, torch.cuda.current_stream().cuda_stream)
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    g.replay()
    b.record()
    b.synchronize()
    print(f"{a.elapsed_time(b) / 20 * 1e3:8.1f} us  GPU time of one cope_attention_cuda call (graph of 20)")


if __name__ == "__main__":
    main()
