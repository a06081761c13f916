"""Where CoPE's T = 1k prefill time goes (GPU clock, CUDA graphs of 20 calls, bf16), printed as one table:
- H = 16 against H = 8 (256 blocks, two per SM, against 128 blocks, one per SM): whether a block sharing its
  SM with another runs slower than alone, i.e. whether pairing heavy and light query tiles would pay;
- npos_max = 64 against 2 (positions saturate after a few keys, so nearly every tile takes the saturated
  path): the cost of the unsaturated tiles (gates, scan, interpolation);
- SDPA-flash on the same shapes, for scale."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import attention_cuda as ac  # noqa: E402
from selfext_native import _native  # noqa: E402


def main():
    T, D = 1024, 64
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| H | npos_max | ours_us | sdpa_flash_us | ratio |")
    print("|---|---|---|---|---|")
    for H, npos in [(16, 64), (8, 64), (16, 2), (8, 2), (32, 64), (4, 64)]:
        torch.manual_seed(T + D)
        q, k, v = (torch.randn(T, H, D, device=ac.DEV, dtype=torch.bfloat16) for _ in range(3))
        pe = torch.randn(npos, D, device=ac.DEV, dtype=torch.bfloat16)
        out = torch.empty_like(q)
        qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def ours(c):
            _native.cope_attention_cuda(q, k, v, pe, out, D ** -0.5, False, ac.stream(), same_stream=True)

        def sdpa(c):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

        a, b = ac.graph_time_ms(ours, 20) * 1e3, ac.graph_time_ms(sdpa, 20) * 1e3
        print(f"| {H} | {npos} | {a:.1f} | {b:.1f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
