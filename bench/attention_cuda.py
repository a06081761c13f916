"""CUDA attention bench (issue 7): SelfExtend and CoPE kernels against anchors measured in the same run.

  python3 bench/attention_cuda.py [--out DIR] [--quick] [--decode-only]

SelfExtend prefill, bf16, causal, G=4, W=1024: ours vs torch SDPA (flash backend) on pre-rotated inputs
(the plain-attention ceiling) and LongLM's flash formulation reproduced with flex_attention (a sliding-
window pass for the neighbor branch + a causal pass of q[W:] against k[:T-W] at grouped positions,
merged by log-sum-exp; its rotations are precomputed and not timed). TFLOP/s count 4*T^2*D*H/2.
Decode (T_q = 1, T = 32k): KV bytes read per second, counting K and V once (2 * T * H_kv * D * 2 bytes;
the RoPE table, Q and out are < 3% and not counted), with the cache rotated across copies whose total
exceeds 4x the L2, against a read bandwidth measured in the same run (torch sum over 2 GiB); the calls are
captured in a CUDA graph, so the time is the GPU's, not the binding's launch overhead. Decode latency at
T = 640 and 4096 (one layer of a decode step), also with fewer splits (SELFEXT_CUDA_SE_DEC_CPS).
CoPE prefill, bf16, npos_max=64: ours vs the paper's formulation in torch (every T x T temporary
materialized; OOM reported) and SDPA flash (plain attention). Prints a Markdown table, writes JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import selfext_native  # noqa: E402
from selfext_native import _native  # noqa: E402
from selfext_native.rope import RopeConfig, rope_inv_freq  # noqa: E402

DEV = torch.device("cuda")


def attn_flops(T: int, H: int, D: int) -> float:
    """Causal attention FLOPs, the convention of ANCHORS.md: 4 * T^2 * D * H / 2."""
    return 4.0 * T * T * D * H / 2


def kv_bytes(T: int, H_kv: int, D: int, elem: int = 2) -> int:
    """Decode bytes: K and V read once."""
    return 2 * T * H_kv * D * elem


def time_ms(fn, reps: int, warmup: int = 2) -> float:
    """Median of `reps` event-timed calls, after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def rope_tables(D, T):
    inv, mscale = rope_inv_freq(RopeConfig(freq_base=10000.0, dim=D))
    table = torch.empty((T, D // 2, 2), dtype=torch.float32, device=DEV)
    _native.rope_table_cuda(inv, mscale, table, stream())
    return inv, mscale, table


def rotate(x, pos, table):
    """(T, H, D) rotated at positions pos with the norm pair convention, in float32, back to x's dtype."""
    c, s = table[pos, :, 0][:, None, :], table[pos, :, 1][:, None, :]
    xf = x.float()
    a, b = xf[..., 0::2], xf[..., 1::2]
    y = torch.empty_like(xf)
    y[..., 0::2] = a * c - b * s
    y[..., 1::2] = a * s + b * c
    return y.to(x.dtype)


def rel(a, b):
    a, b = a.double(), b.double()
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


# --- SelfExtend prefill ---------------------------------------------------------------------------------------


def bench_se_prefill(H, H_kv, D, T, G, W, flex, reps):
    torch.manual_seed(T + H)
    q = torch.randn(T, H, D, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(T, H_kv, D, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(T, H_kv, D, device=DEV, dtype=torch.bfloat16)
    inv, mscale, table = rope_tables(D, T)
    out = torch.empty_like(q)
    scale = D ** -0.5

    def ours():
        _native.self_extend_attention_cuda(q, k, v, out, inv, mscale, G, W, "norm", D, scale, stream(), table,
                                           same_stream=True)

    row = {"op": "self_extend_prefill", "H": H, "H_kv": H_kv, "D": D, "T": T, "G": G, "W": W, "dtype": "bf16"}
    flops = attn_flops(T, H, D)
    ms = time_ms(ours, reps)
    row["ours_ms"] = ms
    row["ours_tflops"] = flops / ms / 1e9
    def with_env(**env):  # the same call with knobs forced (read by the native side per call)
        os.environ.update(env)
        try:
            return time_ms(ours, reps)
        finally:
            for name in env:
                del os.environ[name]

    # The wgmma kernel's tile configurations (SELFEXT_CUDA_SE_WGMMA_CFG: Q from shared memory or registers,
    # 64- or 128-key tiles, p: software-pipelined), then the mma.sync phased kernel (the wgmma kernel needs sm_90a, head dims 64, 128).
    for cfg in ("s64", "q64", "s128", "q128", "s64p", "q64p", "s128p", "q128p", "s64p2"):
        ms_c = with_env(SELFEXT_CUDA_SE_WGMMA_CFG=cfg)
        row[f"wgmma_{cfg}_tflops"] = flops / ms_c / 1e9
    ms_w = with_env(SELFEXT_CUDA_SE_WGMMA="0")
    row["phased_mma_sync_ms"] = ms_w
    row["phased_mma_sync_tflops"] = flops / ms_w / 1e9
    # K rotated per query block and tile (the default rotates K once per call here: more than one
    # 128-row query block per kv head).
    ms_p = with_env(SELFEXT_CUDA_SE_PREROT="0")
    row["tile_rot_ms"] = ms_p
    row["tile_rot_tflops"] = flops / ms_p / 1e9
    # se_attention_kernel instead of the phased kernel, as it ran before (two 16-row tiles per warp at
    # head dims <= 80, one above: 8 warps), and with one tile per warp at every head dim.
    ms_u = with_env(SELFEXT_CUDA_SE_PHASED="0")
    row["unphased_ms"] = ms_u
    row["unphased_tflops"] = flops / ms_u / 1e9
    if D <= 80:
        ms_m = with_env(SELFEXT_CUDA_SE_PHASED="0", SELFEXT_CUDA_SE_MT="1")
        row["unphased_mt1_ms"] = ms_m
        row["unphased_mt1_tflops"] = flops / ms_m / 1e9

    pos = torch.arange(T, device=DEV)
    qn, kn = rotate(q, pos, table), rotate(k, pos, table)
    # (1, H, T, D) for torch
    qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (qn, kn, v))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)

    try:
        ms_s = time_ms(sdpa, reps)
        row["sdpa_flash_ms"] = ms_s
        row["sdpa_flash_tflops"] = flops / ms_s / 1e9
        row["ours_vs_sdpa_flash"] = ms_s / ms
        if T <= 4096:  # short calls: also the GPU's time alone (CUDA graph of 20 calls), without host launch work
            g_ours, g_sdpa = graph_time_ms(lambda c: ours(), 20), graph_time_ms(lambda c: sdpa(), 20)
            row.update(ours_gpu_tflops=flops / g_ours / 1e9, sdpa_flash_gpu_tflops=flops / g_sdpa / 1e9,
                       ours_gpu_vs_sdpa_flash=g_sdpa / g_ours)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        row["sdpa_flash_error"] = repr(e)[:200]

    if flex is not None and T > W:
        try:
            flex_fn, create_block_mask = flex
            gq = pos // G + W - W // G
            qg, kg = rotate(q, gq.clamp(max=T - 1), table), rotate(k, pos // G, table)
            qgt, kgt = (x.transpose(0, 1).unsqueeze(0) for x in (qg, kg))

            def neighbor(b, h, qi, kj):
                return (kj <= qi) & (qi - kj < W)

            def causal(b, h, qi, kj):
                return kj <= qi

            bm1 = create_block_mask(neighbor, None, None, T, T, device=DEV)
            bm2 = create_block_mask(causal, None, None, T - W, T - W, device=DEV)
            qgs, kgs, vgs = qgt[:, :, W:].contiguous(), kgt[:, :, : T - W].contiguous(), vt[:, :, : T - W].contiguous()

            def two_pass():
                o1, l1 = flex_fn(qt, kt, vt, block_mask=bm1, enable_gqa=True, return_lse=True, scale=scale)
                o2, l2 = flex_fn(qgs, kgs, vgs, block_mask=bm2, enable_gqa=True, return_lse=True, scale=scale)
                l1w = l1[:, :, W:]
                m = torch.maximum(l1w, l2)
                w1, w2 = torch.exp(l1w - m), torch.exp(l2 - m)
                merged = (o1[:, :, W:].float() * w1[..., None] + o2.float() * w2[..., None]) / (w1 + w2)[..., None]
                return torch.cat([o1[:, :, :W].float(), merged], dim=2)

            t0 = time.time()
            ref = two_pass()
            row["flex_compile_s"] = time.time() - t0
            ours()
            row["flex_vs_ours_rel_diff"] = rel(out.transpose(0, 1).unsqueeze(0), ref)
            ms_f = time_ms(two_pass, reps)
            row["flex_two_pass_ms"] = ms_f
            row["flex_two_pass_tflops"] = flops / ms_f / 1e9
            row["ours_vs_flex"] = ms_f / ms
        except Exception as e:  # noqa: BLE001
            row["flex_error"] = repr(e)[:300]
    return row


# --- SelfExtend decode ------------------------------------------------------------------------------------------


def read_bandwidth():
    x = torch.empty(2**30, dtype=torch.bfloat16, device=DEV).normal_()
    ms = time_ms(lambda: x.sum(dtype=torch.float32), 10)
    y = torch.empty_like(x)
    ms_c = time_ms(lambda: y.copy_(x), 10)
    nbytes = x.numel() * 2
    del x, y
    return nbytes / ms / 1e6, 2 * nbytes / ms_c / 1e6  # GB/s read (sum), GB/s read+write (copy)


def graph_time_ms(call, n_calls: int, reps: int = 5) -> float:
    """Median ms per call of `n_calls` calls call(c) captured in one CUDA graph: the GPU's time, not the
    Python binding's launch overhead."""
    return 1e3 * _common.cuda_graph_seconds(call, n_calls, reps, warm=4)


def se_decode_call(H, H_kv, D, T, G, W, n_sets):
    """call(c): one T_q = 1 SelfExtend call over the c-th of n_sets K/V copies (bf16), the kernel chosen by
    SELFEXT_CUDA_SE_DECODE at capture time (default: the T_q = 1 kernel)."""
    sets = [(torch.randn(T, H_kv, D, device=DEV, dtype=torch.bfloat16),
             torch.randn(T, H_kv, D, device=DEV, dtype=torch.bfloat16)) for _ in range(n_sets)]
    q = torch.randn(1, H, D, device=DEV, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    inv, mscale, table = rope_tables(D, T)

    def call(c):
        k, v = sets[c % n_sets]
        _native.self_extend_attention_cuda(q, k, v, out, inv, mscale, G, W, "norm", D, D ** -0.5, stream(), table)

    return call


def timed_kernels(call, n_calls):
    """ms per call of (the default: the tensor-core decode kernel, the CUDA-core decode kernel
    (SELFEXT_CUDA_SE_DEC_MMA=0), the tile kernel (SELFEXT_CUDA_SE_DECODE=0)), each captured separately."""
    out = []
    for var, flag in ((None, None), ("SELFEXT_CUDA_SE_DEC_MMA", "0"), ("SELFEXT_CUDA_SE_DECODE", "0")):
        if var:
            os.environ[var] = flag
        try:
            out.append(graph_time_ms(call, n_calls))
        finally:
            if var:
                del os.environ[var]
    return tuple(out)


def bench_se_decode(H, H_kv, D, T, G, W, l2_bytes):
    per = kv_bytes(T, H_kv, D)
    n_sets = max(2, math.ceil(4 * l2_bytes / per) + 1)
    ms, ms_c, ms_t = timed_kernels(se_decode_call(H, H_kv, D, T, G, W, n_sets), 60)
    gbs = per / ms / 1e6
    rb, cb = read_bandwidth()
    return {"op": "self_extend_decode", "H": H, "H_kv": H_kv, "D": D, "T": T, "G": G, "W": W, "dtype": "bf16",
            "kv_sets": n_sets, "kv_bytes_per_call": per, "ours_us": ms * 1e3, "ours_GBps": gbs,
            "cuda_core_kernel_us": ms_c * 1e3, "cuda_core_kernel_GBps": per / ms_c / 1e6,
            "tile_kernel_us": ms_t * 1e3, "tile_kernel_GBps": per / ms_t / 1e6,
            "read_GBps_torch_sum": rb, "copy_GBps_read_plus_write": cb, "ours_vs_read_bw": gbs / rb,
            "bytes_counted": "K and V of every key once (T * H_kv * D * 2 bytes each, bf16); q, the RoPE table "
                             "and the split-K workspace not counted",
            "timing": "CUDA graph of 60 calls",
            "kernel": "tensor-core T_q = 1 decode kernel (CUDA-core: SELFEXT_CUDA_SE_DEC_MMA=0; tile kernel: "
                      "SELFEXT_CUDA_SE_DECODE=0)",
            "workspace_bytes": _native.self_extend_attention_cuda_workspace_bytes(1, T, H, H_kv, D, D, True)}


def bench_se_decode_latency(H, H_kv, D, T, G, W):
    """A decode step's attention at short T (the loop's case: a few hundred to a few thousand keys, one
    layer's K/V in L2): microseconds per call, all three kernels, split-K merge included."""
    call = se_decode_call(H, H_kv, D, T, G, W, 2)
    ms, ms_c, ms_t = timed_kernels(call, 100)
    by_cps = {}
    try:  # the decode kernel with fewer splits: at least N 64-key chunks per split (all: one split, no merge)
        for cps in (2, 4, 1 << 20):
            os.environ["SELFEXT_CUDA_SE_DEC_CPS"] = str(cps)
            by_cps["all" if cps == 1 << 20 else str(cps)] = graph_time_ms(call, 100) * 1e3
    finally:
        os.environ.pop("SELFEXT_CUDA_SE_DEC_CPS", None)
    return {"op": "self_extend_decode_latency", "H": H, "H_kv": H_kv, "D": D, "T": T, "G": G, "W": W,
            "dtype": "bf16", "ours_us": ms * 1e3, "cuda_core_kernel_us": ms_c * 1e3, "tile_kernel_us": ms_t * 1e3,
            "ours_us_by_chunks_per_split": by_cps, "timing": "CUDA graph of 100 calls"}


# --- CoPE --------------------------------------------------------------------------------------------------------


def cope_paper(q, k, v, pe, scale, npos):
    """The paper's listing in torch (B, H, T, D): every T x T temporary materialized."""
    T = q.shape[2]
    logits = (q @ k.transpose(-1, -2)) * scale
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    logits = logits.masked_fill(mask, float("-inf"))
    gates = torch.sigmoid(logits)
    pos = gates.flip(-1).cumsum(dim=-1).flip(-1).clamp(max=npos - 1)
    pos_ceil, pos_floor = pos.ceil().long(), pos.floor().long()
    logits_int = q @ pe.transpose(0, 1)
    lc, lf = logits_int.gather(-1, pos_ceil), logits_int.gather(-1, pos_floor)
    w = pos - pos_floor
    z = lc * w + lf * (1 - w)
    return torch.softmax(logits + z, dim=-1) @ v


def bench_cope(H, D, T, npos, reps):
    torch.manual_seed(T + D)
    q, k, v = (torch.randn(T, H, D, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    pe = torch.randn(npos, D, device=DEV, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    scale = D ** -0.5
    flops = attn_flops(T, H, D)
    row = {"op": "cope_prefill", "H": H, "H_kv": H, "D": D, "T": T, "npos_max": npos, "dtype": "bf16"}

    def ours():
        # same_stream: what selfext_native.cope_attention passes for torch tensors on the current stream
        _native.cope_attention_cuda(q, k, v, pe, out, scale, False, stream(), same_stream=True)

    ms = time_ms(ours, reps)
    row.update(ours_ms=ms, ours_tflops=flops / ms / 1e9,
               ours_extra_bytes=_native.cope_attention_cuda_workspace_bytes(T, T, H, H, D, npos))
    qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

    ms_s = time_ms(sdpa, reps)
    row.update(sdpa_flash_ms=ms_s, ours_time_vs_sdpa_flash=ms / ms_s)
    # The GPU's time alone: each call above is timed from an idle GPU, so its time includes the host's
    # launch work (our binding imports five tensors through DLPack; SDPA's dispatcher), which at T = 1k
    # is a large part of it. A CUDA graph of a batch of calls removes both sides' host work.
    g_ours = graph_time_ms(lambda c: ours(), 20)
    g_sdpa = graph_time_ms(lambda c: sdpa(), 20)
    row.update(ours_gpu_ms=g_ours, sdpa_flash_gpu_ms=g_sdpa, ours_gpu_time_vs_sdpa_flash=g_ours / g_sdpa,
               ours_gpu_tflops=flops / g_ours / 1e9)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        ref = cope_paper(qt, kt, vt, pe, scale, npos)
        del ref
        row["paper_peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
        if T <= 4096:  # the check runs the paper's formulation in float32: in bf16 its positions round
            ref32 = cope_paper(qt.float(), kt.float(), vt.float(), pe.float(), scale, npos)
            row["ours_vs_paper_fp32_rel_diff"] = rel(out.transpose(0, 1).unsqueeze(0), ref32)
            del ref32
        ms_p = time_ms(lambda: cope_paper(qt, kt, vt, pe, scale, npos), max(3, reps // 2), warmup=1)
        row.update(paper_ms=ms_p, ours_vs_paper=ms_p / ms)
    except torch.OutOfMemoryError:
        row["paper"] = "out of memory"
    torch.cuda.empty_cache()
    return row


# --- main ----------------------------------------------------------------------------------------------------------


def md_table(rows, keys):
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            x = r.get(k, "")
            cells.append(f"{x:.3g}" if isinstance(x, float) else str(x))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--quick", action="store_true", help="T = 4k only, no flex")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--decode-only", action="store_true", help="only the SelfExtend decode rows")
    ap.add_argument("--prefill-only", action="store_true", help="only the SelfExtend prefill rows (no flex)")
    ap.add_argument("--cope-only", action="store_true", help="only the CoPE rows")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    flex = None
    if not (args.quick or args.no_flex or args.prefill_only or args.cope_only):
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            from torch import _dynamo

            # One compiled kernel per (shape, head count): raise the recompile limit, or dynamo falls back
            # to flex's unfused path (T x T scores) after 8 shapes.
            _dynamo.config.cache_size_limit = 64
            if hasattr(_dynamo.config, "recompile_limit"):
                _dynamo.config.recompile_limit = 64
            flex = (torch.compile(flex_attention, dynamic=False), create_block_mask)
        except Exception as e:  # noqa: BLE001
            print("flex_attention unavailable:", e)
    Ts = [4096] if args.quick else [4096, 16384, 32768]
    rows = []
    t0 = time.time()
    for H, H_kv, D in [] if args.decode_only or args.cope_only else [(32, 8, 128), (9, 3, 64)]:
        for T in Ts:
            r = bench_se_prefill(H, H_kv, D, T, 4, 1024, flex, reps=10 if T <= 16384 else 5)
            print(json.dumps(r), flush=True)
            rows.append(r)
    if not (args.prefill_only or args.cope_only):
        rows.append(bench_se_decode(32, 8, 128, 32768, 4, 1024, l2))
        print(json.dumps(rows[-1]), flush=True)
    for H, H_kv, D in [] if args.prefill_only or args.cope_only else [(32, 8, 128), (9, 3, 64)]:
        for T in [640, 4096]:
            rows.append(bench_se_decode_latency(H, H_kv, D, T, 4, 1024))
            print(json.dumps(rows[-1]), flush=True)
    for H, D in [] if args.decode_only or args.prefill_only else [(16, 64), (32, 128)]:
        for T in ([1024, 4096] if args.quick else [1024, 4096, 16384]):
            r = bench_cope(H, D, T, 64, reps=10)
            print(json.dumps(r), flush=True)
            rows.append(r)
    doc = {
        "bench": "attention_cuda",
        "device": torch.cuda.get_device_name(0),
        "sms": props.multi_processor_count,
        "l2_bytes": l2,
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "selfext_native": selfext_native.__version__,
        "timing": "prefill: median of N CUDA-event-timed calls after warm-up (host launch work included); "
                  "*_gpu_ms: CUDA graph of 20 calls (the GPU's time); decode: CUDA graph of a batch of calls",
        "flops": "4*T^2*D*H/2 (causal)",
        "wall_s": time.time() - t0,
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    tag = "h100" if "H100" in doc["device"] else doc["device"].replace(" ", "_").lower()
    suffix = "-decode" if args.decode_only else "-prefill" if args.prefill_only else "-cope" if args.cope_only else ""
    path = os.path.join(args.out, f"attention_cuda-{tag}{suffix}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    se = [r for r in rows if r["op"] == "self_extend_prefill"]
    print(md_table(se, ["H", "H_kv", "D", "T", "ours_tflops", "wgmma_s64_tflops", "wgmma_q64_tflops", "wgmma_s128_tflops", "wgmma_q128_tflops", "wgmma_s64p_tflops", "wgmma_q64p_tflops", "wgmma_s128p_tflops", "wgmma_q128p_tflops", "wgmma_s64p2_tflops", "phased_mma_sync_tflops", "tile_rot_tflops", "unphased_tflops", "unphased_mt1_tflops", "sdpa_flash_tflops", "flex_two_pass_tflops",
                        "ours_vs_sdpa_flash", "ours_vs_flex", "flex_vs_ours_rel_diff", "ours_gpu_tflops",
                        "sdpa_flash_gpu_tflops", "ours_gpu_vs_sdpa_flash"]))
    dec = [r for r in rows if r["op"] == "self_extend_decode"]
    print(md_table(dec, ["T", "ours_us", "ours_GBps", "cuda_core_kernel_us", "tile_kernel_us", "read_GBps_torch_sum", "ours_vs_read_bw",
                         "kv_sets"]))
    lat = [r for r in rows if r["op"] == "self_extend_decode_latency"]
    for r in lat:
        r["ours_us_cps"] = " ".join(f"{k}:{v:.1f}" for k, v in r["ours_us_by_chunks_per_split"].items())
    print(md_table(lat, ["H", "H_kv", "D", "T", "ours_us", "cuda_core_kernel_us", "tile_kernel_us", "ours_us_cps"]))
    cp = [r for r in rows if r["op"] == "cope_prefill"]
    print(md_table(cp, ["H", "D", "T", "ours_ms", "ours_tflops", "sdpa_flash_ms", "paper_ms", "ours_vs_paper",
                        "ours_time_vs_sdpa_flash", "ours_gpu_ms", "sdpa_flash_gpu_ms", "ours_gpu_time_vs_sdpa_flash",
                        "ours_extra_bytes", "paper_peak_extra_bytes",
                        "ours_vs_paper_fp32_rel_diff", "paper"]))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
