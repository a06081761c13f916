#!/usr/bin/env python
"""Quantized weight products on the CPU (issue 5), per GGUF type, 1 and 2 threads:

(a) matrix-vector (decode) on weights >= 4x the last-level cache, in GB/s of weight bytes read, next to
    the read bandwidth measured in the same run (NumPy sum over a buffer of the same size, one slice
    per thread);
(b) matrix-matrix 512 x K x N, (K, N) = (2048, 2048) and (2048, 8192), in GFLOP/s, next to NumPy
    float32 matmul on the dequantized weights in the same run (same thread count for its BLAS).

Ours and the anchor are timed alternately, median of --reps, so a busy machine slows both alike.
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed from the environment (the script re-executes itself)
so OpenBLAS picks its kernel as a user's NumPy would; the kernel's name is recorded.

    python bench/quant_cpu.py [--types Q4_0,Q4_K] [--threads 1,2] [--out FILE]  (default bench/results/quant_cpu-<cpu>.json)
"""
from __future__ import annotations

import os
import sys

_SCRUB = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(k in os.environ for k in _SCRUB):
    os.execve(sys.executable, [sys.executable] + sys.argv, {k: v for k, v in os.environ.items() if k not in _SCRUB})

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import _quant_common as qc  # noqa: E402

import selfext_native  # noqa: E402
from selfext_native import quant  # noqa: E402

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F32", "F16", "BF16"]
TARGET_GBS = {"Q4_0": 0.6, "Q4_K": 0.6, "Q8_0": 0.6}   # of read bandwidth
TARGET_MM = {"Q4_0": 1.0, "Q4_K": 1.0, "Q8_0": 1.0}    # of NumPy float32 matmul
PREFILL_T = 512
PREFILL_KN = [(2048, 2048), (2048, 8192)]
DECODE_COLS = 4096


def flops(t, k, n):
    return 2.0 * t * k * n


def interleaved(fns, reps):
    """Median time of each fn, run alternately (one warm-up each)."""
    for f in fns:
        f()
    ts = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            f()
            ts[i].append(time.perf_counter() - t)
    return [float(np.median(x)) for x in ts]


def bench_decode(name, info, threads, llc, rng, reps, pool):
    row_bytes = DECODE_COLS // info["block_size"] * info["block_bytes"]
    rows = -(-4 * llc // row_bytes)
    w = qc.random_weights(name, rows, DECODE_COLS, info["block_size"], info["block_bytes"], rng)
    x = rng.standard_normal(DECODE_COLS, dtype=np.float32)
    out = np.empty(rows, np.float32)
    buf = np.ones(w.nbytes // 4, np.float32)
    slices = np.array_split(buf, threads)

    def ours():
        quant.matmul_quant(w, name, (rows, DECODE_COLS), x, out=out)

    def read():
        if threads == 1:
            buf.sum()
        else:
            list(pool.map(np.sum, slices))

    t_ours, t_read = interleaved([ours, read], reps)
    return {"kind": "matvec", "type": name, "threads": threads, "rows": rows, "cols": DECODE_COLS,
            "weight_bytes": int(w.nbytes), "time_s": t_ours, "gbs": w.nbytes / t_ours / 1e9,
            "read_gbs": w.nbytes / t_read / 1e9, "ratio": t_read / t_ours}


def bench_prefill(name, info, threads, k, n, rng, reps):
    w = qc.random_weights(name, n, k, info["block_size"], info["block_bytes"], rng)
    wd = quant.dequantize(w, name, (n, k))
    x = rng.standard_normal((PREFILL_T, k), dtype=np.float32)
    out = np.empty((PREFILL_T, n), np.float32)
    ref = np.empty((PREFILL_T, n), np.float32)
    wdt = wd.T

    def ours():
        quant.matmul_quant(w, name, (n, k), x, out=out)

    def numpy_mm():
        np.matmul(x, wdt, out=ref)

    t_ours, t_np = interleaved([ours, numpy_mm], reps)
    f = flops(PREFILL_T, k, n)
    return {"kind": "matmat", "type": name, "threads": threads, "T": PREFILL_T, "K": k, "N": n,
            "time_s": t_ours, "gflops": f / t_ours / 1e9, "numpy_gflops": f / t_np / 1e9, "ratio": t_np / t_ours}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    blas = qc.Blas()
    cpu = _common.cpu_name()
    llc = qc.last_level_cache_bytes()
    rng = np.random.default_rng(0)
    info = {t: quant.block_info(t) for t in types}
    results = []
    for threads in [int(s) for s in args.threads.split(",")]:
        selfext_native.set_num_threads(threads)
        if not blas.set_threads(threads):
            print("warning: cannot set NumPy's BLAS thread count", file=sys.stderr)
        with ThreadPoolExecutor(threads) as pool:
            for name in types:
                r = bench_decode(name, info[name], threads, llc, rng, args.reps, pool)
                results.append(r)
                print(f"{name:5s} {threads}t matvec {r['gbs']:6.1f} GB/s  read {r['read_gbs']:6.1f} GB/s", flush=True)
                for k, n in PREFILL_KN:
                    r = bench_prefill(name, info[name], threads, k, n, rng, max(3, args.reps // 2))
                    results.append(r)
                    print(f"{name:5s} {threads}t matmat {k}x{n} {r['gflops']:6.1f} GFLOP/s  numpy {r['numpy_gflops']:6.1f}",
                          flush=True)
    payload = {
        "bench": "quant_cpu", "device": cpu, "commit": _common.git_commit(), "simd_level": selfext_native.backends()["cpu"]["simd_level"],
        "numpy_blas": blas.kernel(), "last_level_cache_bytes": llc, "load_average": os.getloadavg(),
        "decode_cols": DECODE_COLS, "targets": {"matvec_of_read_bw": TARGET_GBS, "matmat_of_numpy": TARGET_MM},
        "results": results,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=2)
        out = args.out
    else:
        out = _common.write_json("quant_cpu", cpu, payload)
    print()
    print(table(payload))
    print(f"\nwrote {out}")


def table(payload) -> str:
    """The Markdown table of docs/quant_cpu.md."""
    rows = {}
    for r in payload["results"]:
        key = (r["type"], r["threads"])
        rows.setdefault(key, {})
        if r["kind"] == "matvec":
            rows[key]["mv"] = f"{r['gbs']:.1f} / {r['read_gbs']:.1f} ({100 * r['ratio']:.0f}%)"
        else:
            rows[key][f"mm{r['N']}"] = f"{r['gflops']:.0f} / {r['numpy_gflops']:.0f} ({r['ratio']:.2f}x)"
    lines = [f"{payload['device']}, {payload['simd_level']}, NumPy BLAS: {payload['numpy_blas']}, commit {payload['commit']}",
             "",
             "| type | threads | matvec GB/s / read GB/s | 512x2048x2048 GFLOP/s / NumPy f32 | 512x2048x8192 GFLOP/s / NumPy f32 |",
             "|---|---|---|---|---|"]
    for (t, th), v in rows.items():
        lines.append(f"| {t} | {th} | {v.get('mv', '')} | {v.get('mm2048', '')} | {v.get('mm8192', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
