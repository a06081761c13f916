#!/usr/bin/env python
"""Quantized weight products on CUDA (issue 8), Llama-3-8B shapes (rows, cols) = (4096, 4096) (q/o),
(14336, 4096) (gate/up), (4096, 14336) (down):

(a) matrix-vector (decode, n = 1) in GB/s of weight bytes read, next to a device-to-device copy of the
    same number of bytes measured in the same run (torch; its GB/s counts bytes read + written, the
    number a copy-bound kernel can reach), for Q4_K, Q6_K, Q4_0, Q8_0;
(b) matrix-matrix (prefill, n = 512 and 4096) in TFLOP/s, next to torch's fp16 matmul of the same shape
    (x (n, cols) @ W.T (cols, rows), fp16 in, cuBLAS) in the same run.

Each weight exists in enough copies to span 4x the L2 cache, cycled call by call, so every call reads its
weights from HBM. A batch of calls is captured in a CUDA graph (the products are graph-capturable), so the times
are the GPU's, not Python's launch overhead; CUDA events around each replay, median of --reps replays.

    python bench/quant_cuda.py [--types Q4_K,Q6_K] [--reps 20] [--out FILE]  (default bench/results/quant_cuda-<gpu>.json)
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import _quant_common as qc  # noqa: E402

import selfext_native  # noqa: E402
from selfext_native import quant  # noqa: E402

TYPES = ["Q4_K", "Q6_K", "Q4_0", "Q8_0"]
SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]
PREFILL_N = [512, 4096]
TARGET_BW = 0.6  # decode: of the copy's bandwidth (issue 8)


def flops(n, rows, cols):
    return 2.0 * n * rows * cols


def weight_bytes(name, rows, cols):
    info = quant.block_info(name)
    return rows * cols // info["block_size"] * info["block_bytes"]


def cuda_time(fn_for, copies, reps, batch):
    """Median seconds per call: `batch` calls fn_for(i) (i cycling over copies) in one CUDA graph, every
    copy touched once before the capture."""
    return _common.cuda_graph_seconds(lambda k: fn_for(k % copies), batch, reps, warm=copies)


def n_copies(nbytes, l2):
    return max(2, -(-4 * l2 // nbytes))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument("--decode-only", action="store_true", help="skip the matrix-matrix part")
    ap.add_argument("--shapes", default=None,
                    help="ROWSxCOLS,... instead of the default shapes (e.g. 49152x576: SmolLM2's head)")
    args = ap.parse_args()
    types = args.types.split(",")
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    l2 = int(getattr(props, "L2_cache_size", 64 << 20) or (64 << 20))
    rng = np.random.default_rng(0)

    decode_rows, prefill_rows = [], []
    for name in types:
        info = quant.block_info(name)
        shapes = [tuple(int(v) for v in sh.split("x")) for sh in args.shapes.split(",")] if args.shapes else SHAPES
        for rows, cols in shapes:
            nbytes = weight_bytes(name, rows, cols)
            host = qc.random_weights(name, rows, cols, info["block_size"], info["block_bytes"], rng)
            w0 = torch.from_numpy(host).to(dev)
            copies = n_copies(nbytes, l2)
            ws = [w0] + [w0.clone() for _ in range(copies - 1)]
            # (a) decode
            x = torch.randn(cols, device=dev)
            y = torch.empty(rows, device=dev)
            t = cuda_time(lambda i: quant.matmul_quant(ws[i], name, (rows, cols), x, out=y), copies, args.reps, 2 * copies)
            dsts = [torch.empty_like(w) for w in ws]
            t_copy = cuda_time(lambda i: dsts[i].copy_(ws[i]), copies, args.reps, 2 * copies)
            gbs, copy_gbs = nbytes / t / 1e9, 2 * nbytes / t_copy / 1e9
            decode_rows.append({
                "type": name, "rows": rows, "cols": cols, "weight_MB": round(nbytes / 1e6, 1),
                "us": round(t * 1e6, 1), "GB/s": round(gbs), "copy GB/s": round(copy_gbs),
                "ratio": round(gbs / copy_gbs, 3), "target": TARGET_BW,
            })
            if name in ("Q4_0", "Q8_0", "Q4_K", "Q6_K"):
                # The model's decode path for these types: the activation row prepared into 16-bit codes
                # (its own kernel, timed with the product) and the dp4a product (matvec_q_cuda).
                from selfext_native import _native

                wsq = torch.empty(_native.activation_q_bytes(cols), dtype=torch.uint8, device=dev)
                qt = int(quant.qtype_id(name))
                t_q = cuda_time(lambda i: _native.matvec_q_cuda(ws[i], qt, rows, cols, x, y, False, wsq, "float", None,
                                                                0.0, None, torch.cuda.current_stream().cuda_stream),
                                copies, args.reps, 2 * copies)
                decode_rows[-1].update({"mvq us": round(t_q * 1e6, 1), "mvq GB/s": round(nbytes / t_q / 1e9),
                                        "mvq ratio": round(nbytes / t_q / copy_gbs / 1e9, 3)})
            del dsts
            # (b) prefill
            if args.decode_only:
                del ws, w0
                torch.cuda.empty_cache()
                continue
            w16 = torch.from_numpy(quant.dequantize(host, name, (rows, cols))).to(dev).half()
            for n in PREFILL_N:
                xs = torch.randn(n, cols, device=dev)
                ys = torch.empty(n, rows, device=dev)
                reps = max(3, args.reps // 4)
                t = cuda_time(lambda i: quant.matmul_quant(ws[i], name, (rows, cols), xs, out=ys), copies, reps, copies)
                x16 = xs.half()
                r16 = torch.empty(n, rows, device=dev, dtype=torch.float16)
                t_ref = cuda_time(lambda i: torch.matmul(x16, w16.T, out=r16), 1, reps, 4)
                tf, tf_ref = flops(n, rows, cols) / t / 1e12, flops(n, rows, cols) / t_ref / 1e12
                prefill_rows.append({
                    "type": name, "n": n, "rows": rows, "cols": cols, "ms": round(t * 1e3, 3),
                    "TFLOP/s": round(tf, 1), "torch fp16 TFLOP/s": round(tf_ref, 1), "ratio": round(tf / tf_ref, 3),
                })
                del xs, ys, x16
            del ws, w16, w0
            torch.cuda.empty_cache()

    print(f"## matrix-vector (n = 1), {props.name}\n")
    print(_common.markdown_table(decode_rows, ["type", "rows", "cols", "weight_MB", "us", "GB/s", "copy GB/s", "ratio",
                                               "mvq us", "mvq GB/s", "mvq ratio"]))
    print(f"\n## matrix-matrix, {props.name}\n")
    print(_common.markdown_table(prefill_rows, ["type", "n", "rows", "cols", "ms", "TFLOP/s", "torch fp16 TFLOP/s",
                                                "ratio"]))
    payload = {
        "bench": "quant_cuda", "device": props.name, "commit": _common.git_commit(), "versions": _common.versions(),
        "selfext_cuda": selfext_native.backends()["cuda"].get("architectures"),
        "method": "CUDA graph of a batch of calls cycling over weight copies spanning 4x L2; CUDA events around each replay; median of reps",
        "decode": decode_rows, "prefill": prefill_rows,
    }
    path = _common.write_json("quant_cuda", props.name, payload) if args.out is None else args.out
    if args.out is not None:
        import json

        with open(args.out, "w") as f:
            json.dump(payload, f, indent=2)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
