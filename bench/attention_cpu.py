"""CPU attention: SelfExtend and fused CoPE against torch's CPU scaled_dot_product_attention (plain
attention on pre-rotated inputs, the ceiling), measured in the same run.

    python bench/attention_cpu.py [--threads 2] [--quick]

Shapes: T in {1k, 4k, 8k}, (H=9, H_kv=3, D=64) and (H=32, H_kv=8, D=128), prefill (T_q = T), a short
chunk (T_q = 8, the last 8 positions) and decode (T_q = 1). float32 everywhere. SelfExtend: G = 4,
W = 1024 (at T = 1k every pair is in the window, so it is plain RoPE attention; at 4k and 8k both branches
and the boundary tiles run). CoPE: npos_max = 64, one table per layer, no RoPE. SDPA: enable_gqa=True,
is_causal=True for prefill, no mask for decode, an explicit bottom-right causal mask for the chunk (torch's
is_causal aligns to the top left when T_q < T_k).
GFLOP/s count 4·D·H per visible (query, key) pair for all three (the same useful work).
Targets (issue 4): SE >= 0.8x SDPA throughput at T >= 4k; CoPE within 2.5x SDPA time; decode at 8k
within 1.5x SDPA time.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

G, W, NPOS, CHUNK = 4, 1024, 64, 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="T = 1k only (smoke run)")
    args = ap.parse_args()

    import torch

    import selfext_native
    from selfext_native.attention import cope_attention, rope_frequencies, self_extend_attention

    torch.set_num_threads(args.threads)
    selfext_native.set_num_threads(args.threads)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    rng = np.random.default_rng(0)
    load_start = _common.load_average()  # the dev machine is shared: a high load inflates every time
    rows = []
    for H, H_kv, D in [(9, 3, 64), (32, 8, 128)]:
        for T in [1024] if args.quick else [1024, 4096, 8192]:
            q_all = rng.standard_normal((T, H, D), dtype=np.float32)
            k = rng.standard_normal((T, H_kv, D), dtype=np.float32)
            v = rng.standard_normal((T, H_kv, D), dtype=np.float32)
            e = (0.1 * rng.standard_normal((NPOS, D))).astype(np.float32)
            inv_freq = rope_frequencies(D)
            # SDPA's inputs: RoPE applied beforehand (not timed), (1, heads, T, D) contiguous.
            ang = np.arange(T)[:, None] * inv_freq[None, :]
            cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

            def rot(x):
                y = x.astype(np.float64)
                a, b = y[..., 0::2].copy(), y[..., 1::2].copy()
                y[..., 0::2], y[..., 1::2] = a * cos - b * sin, a * sin + b * cos
                return torch.from_numpy(y.astype(np.float32)).permute(1, 0, 2)[None].contiguous()

            tq_all, tk, tv = rot(q_all), rot(k), torch.from_numpy(v).permute(1, 0, 2)[None].contiguous()
            for mode in ("prefill", "chunk", "decode"):
                T_q = {"prefill": T, "chunk": CHUNK, "decode": 1}[mode]
                q = np.ascontiguousarray(q_all[T - T_q:])
                tq = tq_all[:, :, T - T_q:].contiguous()
                # bottom-right causal mask (True = attend) for the chunk; None otherwise
                mask = (torch.arange(T)[None, :] <= torch.arange(T - T_q, T)[:, None]) if mode == "chunk" else None
                flops = _common.attention_flops(T_q, T, H, D)
                big = flops > 50e9
                reps = dict(repeats=3 if big else 7, warmup=1, min_total_s=0.0 if big else 1.0)
                t_sdpa = _common.median_time(
                    lambda: sdpa(tq, tk, tv, attn_mask=mask, is_causal=mode == "prefill", enable_gqa=True), **reps)
                t_se = _common.median_time(lambda: self_extend_attention(q, k, v, group=G, window=W), **reps)
                t_cope = _common.median_time(lambda: cope_attention(q, k, v, e), **reps)
                base = t_sdpa["median_s"]
                for name, t in (("torch SDPA", t_sdpa), ("SelfExtend", t_se), ("CoPE", t_cope)):
                    rows.append({
                        "shape": f"H={H} Hkv={H_kv} D={D}", "T": T, "mode": mode, "kernel": name,
                        "time_ms": round(t["median_s"] * 1e3, 3),
                        "GFLOP/s": round(flops / t["median_s"] / 1e9, 1),
                        "time / SDPA": round(t["median_s"] / base, 2),
                        "runs": t["runs"],
                    })
                print(_common.markdown_table(rows[-3:], list(rows[-1].keys())).split("\n", 2)[2], flush=True)

    device = _common.cpu_name()
    cols = ["shape", "T", "mode", "kernel", "time_ms", "GFLOP/s", "time / SDPA"]
    print(f"\n{device}, {args.threads} threads, SIMD {selfext_native.backends()['cpu']['simd_level']}, "
          f"commit {_common.git_commit()}\n")
    print(_common.markdown_table(rows, cols))
    payload = {
        "bench": "attention_cpu", "load_average_at_start": load_start, "device": device, "threads": args.threads,
        "simd_level": selfext_native.backends()["cpu"]["simd_level"], "commit": _common.git_commit(),
        "versions": _common.versions(), "load_average_at_end": _common.load_average(),
        "settings": {"selfextend": {"group": G, "window": W}, "cope": {"npos_max": NPOS, "per_head": False},
                     "dtype": "float32",
                     "sdpa": "enable_gqa=True; is_causal for prefill, bottom-right mask for the chunk, none for decode",
                     "chunk_T_q": CHUNK,
                     "flops": "4*D*H per visible (query, key) pair"},
        "rows": rows,
    }
    if not args.quick:
        print("\nwrote", _common.write_json("attention_cpu", device, payload))


if __name__ == "__main__":
    main()
