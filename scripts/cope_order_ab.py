"""CoPE prefill on the GPU clock with the boustrophedon block order on and off (SELFEXT_CUDA_COPE_SNAKE),
alternating in one process, beside SDPA-flash: python scripts/cope_order_ab.py [--rounds N]."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import attention_cuda as ab  # noqa: E402
from selfext_native import _native  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(torch.cuda.get_device_name())
    for H, D in ((16, 64), (32, 128)):
        for T in (1024, 2048, 4096):
            torch.manual_seed(T + D)
            q, k, v = (torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            pe = torch.randn(64, D, device="cuda", dtype=torch.bfloat16)
            outs = {}

            def ours(c, key):
                out = outs.setdefault(key, torch.empty_like(q))
                _native.cope_attention_cuda(q, k, v, pe, out, D ** -0.5, False, ab.stream(), same_stream=True)

            qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def sdpa(c):
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

            sd = ab.graph_time_ms(sdpa, 20)
            res = {"1": [], "0": []}
            for _ in range(args.rounds):
                for snake in ("1", "0"):
                    os.environ["SELFEXT_CUDA_COPE_SNAKE"] = snake
                    res[snake].append(ab.graph_time_ms(lambda c: ours(c, snake), 20) * 1e3)
            same = torch.equal(outs["1"], outs["0"])
            print(f"(H={H}, D={D}) T={T}: sdpa {sd * 1e3:.1f} us; snake on {['%.1f' % x for x in res['1']]} us, "
                  f"off {['%.1f' % x for x in res['0']]} us; ratio vs sdpa on/off "
                  f"{min(res['1']) / (sd * 1e3):.2f}/{min(res['0']) / (sd * 1e3):.2f}; same bits: {same}")
    os.environ.pop("SELFEXT_CUDA_COPE_SNAKE", None)


if __name__ == "__main__":
    main()
