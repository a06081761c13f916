"""One SelfExtend prefill call and one SDPA-flash call (pre-rotated inputs) per shape, for Nsight Compute:
    ncu -k regex:"se_attention|flash_fwd" --section SpeedOfLight ... python3 scripts/ncu_se_prefill.py [T]
Shapes (H, H_kv, D) = (32, 8, 128) and (9, 3, 64), bf16, G=4, W=1024: the bench's prefill shapes, at a
T (default 8192) short enough for ncu's replays. Each call runs once before the profiled one (warm-up:
the kernels' attributes and the first-call allocations), so profile with --launch-skip matching.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from attention_cuda import rope_tables, rotate, stream  # noqa: E402
from selfext_native import _native  # noqa: E402


def main():
    T = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    G, W = 4, 1024
    for H, H_kv, D in ((32, 8, 128), (9, 3, 64)):
        q = torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(T, H_kv, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(T, H_kv, D, device="cuda", dtype=torch.bfloat16)
        inv, mscale, table = rope_tables(D, T)
        out = torch.empty_like(q)
        for _ in range(2):
            _native.self_extend_attention_cuda(q, k, v, out, inv, mscale, G, W, "norm", D, D ** -0.5, stream(), table)
        pos = torch.arange(T, device="cuda")
        qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (rotate(q, pos, table), rotate(k, pos, table), v))
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            for _ in range(2):
                F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
