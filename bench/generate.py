"""Prefill (512 tokens) and decode (128 tokens, greedy) speed and peak RSS of our CPU loop, side by side
with llama-cpp-python on the same GGUF files, both timed the same way from Python.

    python bench/generate.py [--threads 2] [--models smollm2,llama-3.2-1b-q4_0,llama-3.2-1b-q4_k_m]
    python bench/generate.py --device cuda [--models smollm2,llama-3-8b-q4_k_m,llama-3-8b-q4_0]

With --device cuda: prefill of 512 and 4096 tokens, and decode of 128 tokens reported twice: the native
step (Model.forward of one token, logits copied back) and end to end (plus greedy sampling in NumPy and
the Python loop). The decode step's weight bytes over its time give the bandwidth it reaches, against a
device-to-device copy measured in the same run (torch). llama.cpp is not on the device machine: its
H100 figures are in ../shared/ANCHORS.md (tg128 934-953 t/s, pp4096 46-53k t/s on SmolLM2 Q4_1).

Each (system, model) runs in its own subprocess so peak RSS is its own; --rounds (default 3) repeats
each pair in alternating order and reports medians, and the JSON records the steal time of the run. llama-cpp-python is optional
(`pip install llama-cpp-python==0.3.36`); without it only our rows are printed. Random-weight models
with Llama-3.2-1B's shapes and SmolLM2's vocabulary are written once to bench/.models/ (git-ignored)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import _common  # noqa: E402

N_PREFILL, N_DECODE = 512, 128


def model_path(name: str) -> str:
    if name == "smollm2":
        from selfext_native.default_model import default_model_path

        return default_model_path()
    import gguf_factory

    preset, q = name.rsplit("-", 1)
    qtype = {"q4_0": "Q4_0", "q8_0": "Q8_0",
             # Q4_K_M: Q4_K everywhere, Q6_K for attn_v, ffn_down and the output head (llama.cpp's mix)
             "q4_k_m": {"default": "Q4_K", "attn_v": "Q6_K", "ffn_down": "Q6_K", "token_embd": "Q6_K"}}[q.replace("-", "_")]
    out = HERE / ".models" / f"{name}.gguf"
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        # SmolLM2's tokenizer when the default model is installed, else a synthetic one of the same size
        # (49152 tokens: the same shapes and speed), so the random-weight models need nothing brought over.
        from selfext_native.default_model import default_model_path
        from selfext_native.errors import ArgumentError

        try:
            default_model_path()
            tokenizer = "smollm2"
        except ArgumentError:
            tokenizer = "gpt2-padded"
        gguf_factory.write_benchmark_model(out, preset, qtype, tokenizer=tokenizer)
    return str(out)


def child(system: str, path: str, threads: int) -> dict:
    """Runs in a subprocess: load, prefill N_PREFILL tokens, decode N_DECODE greedy tokens."""
    import resource
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(100, 10000, size=N_PREFILL).astype(np.int32)
    if system == "selfext":
        from selfext_native import LLM

        llm = LLM(path, n_ctx=1024, n_threads=threads)
        model = llm._model  # timed at the native boundary, the same as llama-cpp-python's eval

        def prefill():
            model.truncate(0)
            return model.forward(ids, False)[0]

        def step(tok):
            return model.forward(np.asarray([tok], dtype=np.int32), False)[0]
    else:
        import llama_cpp
        from llama_cpp import Llama

        llm = Llama(path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
        n_vocab = llm.n_vocab()

        def last_logits():
            # The context's own logits of the last token (no copy into llama-cpp-python's score table).
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))

        def prefill():
            llm.reset()
            llm.eval(ids.tolist())
            return last_logits()

        def step(tok):
            llm.eval([tok])
            return last_logits()

    prefill()  # warm-up
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        logits = prefill()
        runs.append(time.perf_counter() - t)
    t_prefill = sorted(runs)[1]
    tok = int(np.argmax(logits))
    t = time.perf_counter()
    for _ in range(N_DECODE):
        tok = int(np.argmax(step(tok)))
    t_decode = time.perf_counter() - t
    return {"prefill_tps": N_PREFILL / t_prefill, "decode_tps": N_DECODE / t_decode,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def decode_weight_bytes(path: str) -> int:
    """Bytes of weights one decode step reads: every matrix but the embedding (only its row is gathered),
    which is read in full when it is also the (tied) output head."""
    from selfext_native.gguf_model import load_model_description

    desc = load_model_description(path)
    total = sum(t.n_bytes for n, t in desc.tensors.items() if n != "token_embd.weight")
    if "output.weight" not in desc.tensors:
        total += desc.tensors["token_embd.weight"].n_bytes
    return total


def copy_bandwidth() -> float:
    """Device-to-device copy of 2 GiB (read + write bytes / time), median of 10, CUDA events."""
    import torch

    a = torch.empty(1 << 31, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    times = []
    for _ in range(11):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    return 2 * (1 << 31) / sorted(times[1:])[5]


def child_cuda(path: str) -> dict:
    import time

    import numpy as np
    from selfext_native import LLM

    rng = np.random.default_rng(0)
    ids = rng.integers(100, 10000, size=4096).astype(np.int32)
    t = time.perf_counter()
    llm = LLM(path, n_ctx=8192, device="cuda", n_batch=4096)
    load_s = time.perf_counter() - t
    model = llm._model
    out = {"load_s": load_s, "allocated_mib": model.allocated_bytes / 2**20, "decode_path": model.decode_path}
    for n in (512, 4096):
        model.truncate(0)
        model.forward(ids[:n], False)  # warm-up
        runs = []
        for _ in range(3):
            model.truncate(0)
            t = time.perf_counter()
            model.forward(ids[:n], False)
            runs.append(time.perf_counter() - t)
        out[f"prefill{n}_tps"] = n / sorted(runs)[1]
    model.truncate(0)
    logits = model.forward(ids[:512], False)[0]
    tok = int(np.argmax(logits))
    one = np.empty(1, dtype=np.int32)
    native = 0.0
    t0 = time.perf_counter()
    for _ in range(N_DECODE):
        one[0] = tok
        t = time.perf_counter()
        row = model.forward(one, False)[0]
        native += time.perf_counter() - t
        tok = int(np.argmax(row))
    e2e = time.perf_counter() - t0
    out["decode_native_tps"] = N_DECODE / native
    out["decode_e2e_tps"] = N_DECODE / e2e
    out["decode_step_ms"] = native / N_DECODE * 1e3
    return out


def main_cuda(args) -> None:
    import torch

    bw = copy_bandwidth()
    gpu = torch.cuda.get_device_name()
    rows = []
    # The decode path (fused RMSNorm/SwiGLU/widening into the products or separate kernels) is chosen
    # per model (ModelCuda::kFuseMaxEmbd); --compare-fusion measures each model on both, forced.
    # --compare VAR=a,b measures each model once per value of the environment variable VAR (e.g.
    # SELFEXT_CUDA_PDL=1,0), each in its own process.
    if args.compare_fusion:
        args.compare = "SELFEXT_CUDA_FUSED=1,0"
    variants = [("default", None, None)]
    if args.compare:
        var, vals = args.compare.split("=", 1)
        variants = [(f"{var}={v}", var, v) for v in vals.split(",")]
    for name, (variant, var, flag) in ((n, v) for n in args.models.split(",") for v in variants):
        path = model_path(name)
        out = subprocess.run([sys.executable, __file__, "--device", "cuda", "--child", "selfext", path],
                             capture_output=True, text=True,
                             env={**os.environ, **({var: flag} if var else {})})
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            rows.append({"model": name, "decode": variant, "error": out.stderr.strip().splitlines()[-1][:300]})
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        wbytes = decode_weight_bytes(path)
        step = r["decode_step_ms"] / 1e3
        rows.append({"model": name, "decode": variant, "path": r["decode_path"], "prefill 512 t/s": round(r["prefill512_tps"]),
                     "prefill 4096 t/s": round(r["prefill4096_tps"]),
                     "decode native t/s": round(r["decode_native_tps"], 1),
                     "decode e2e t/s": round(r["decode_e2e_tps"], 1),
                     "step ms": round(r["decode_step_ms"], 3),
                     "weights MiB": round(wbytes / 2**20),
                     "GB/s": round(wbytes / step / 1e9),
                     "of copy bw": round(wbytes / step / bw, 3),
                     "device MiB": round(r["allocated_mib"]), "load s": round(r["load_s"], 1)})
        print(rows[-1], flush=True)
    print(f"\nGPU: {gpu}; device-to-device copy {bw / 1e9:.0f} GB/s (read + write) in this run; prefill "
          f"512 / 4096, decode {N_DECODE} tokens, n_ctx 8192, f16 cache\n")
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    print(_common.markdown_table(rows, cols))
    import selfext_native

    path = _common.write_json("generate-cuda", gpu + (f"-{args.tag}" if args.tag else ""), {
        "device": gpu, "commit": _common.git_commit(), "versions": {**_common.versions(),
                                                                   "selfext_native": selfext_native.__version__},
        "copy_bandwidth_bytes_per_s": bw, "n_decode": N_DECODE, "rows": rows,
        "anchor": "llama.cpp CUDA on H100, SmolLM2 Q4_1 (ANCHORS.md): tg128 934-953 t/s, pp512 44.8-48.3k, "
                  "pp4096 46.2-52.7k t/s"})
    print(f"\nwrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default=None)
    ap.add_argument("--rounds", type=int, default=3,
                    help="cpu: rounds per model, alternating the systems' order; medians are reported")
    ap.add_argument("--compare-fusion", action="store_true",
                    help="cuda: measure each model with the fused and the unfused decode path (SELFEXT_CUDA_FUSED=1/0)")
    ap.add_argument("--compare", default=None, metavar="VAR=A,B",
                    help="cuda: measure each model once per value of the environment variable VAR")
    ap.add_argument("--tag", default=None, help="suffix of the JSON file name (e.g. compare-pdl)")
    ap.add_argument("--child", nargs=2, metavar=("SYSTEM", "PATH"))
    args = ap.parse_args()
    if args.child:
        if args.device == "cuda":
            print(json.dumps(child_cuda(args.child[1])))
        else:
            print(json.dumps(child(args.child[0], args.child[1], args.threads)))
        return
    if args.device == "cuda":
        args.models = args.models or "smollm2,llama-3-8b-q4_k_m,llama-3-8b-q4_0"
        main_cuda(args)
        return
    args.models = args.models or "smollm2,llama-3.2-1b-q4_0,llama-3.2-1b-q4_k_m"
    try:
        import llama_cpp

        systems = ["selfext", "llama.cpp"]
        llama_version = llama_cpp.__version__
    except ImportError:
        systems, llama_version = ["selfext"], None
    rows, rounds_log = [], []
    steal0 = _common.cpu_steal_ticks()
    for name in args.models.split(","):
        path = model_path(name)
        # Rounds alternate the order of the systems (A B, B A, A B, ...) and each system's figure is the
        # median over rounds: on a shared host whose load changes by the minute (steal time), one run of
        # each, back to back, measures the neighbours as much as the code.
        runs = {system: [] for system in systems}
        for rnd in range(args.rounds):
            for system in (systems if rnd % 2 == 0 else systems[::-1]):
                out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", system,
                                      path], capture_output=True, text=True, check=True)
                runs[system].append(json.loads(out.stdout.strip().splitlines()[-1]))
        rounds_log.append({"model": name, "runs": runs})
        result = {system: {"prefill_tps": median([r["prefill_tps"] for r in rs]),
                           "decode_tps": median([r["decode_tps"] for r in rs]),
                           "peak_rss_mib": max(r["peak_rss_mib"] for r in rs)} for system, rs in runs.items()}
        row = {"model": name}
        for system, r in result.items():
            row[f"{system} prefill t/s"] = round(r["prefill_tps"], 1)
            row[f"{system} decode t/s"] = round(r["decode_tps"], 1)
            row[f"{system} RSS MiB"] = round(r["peak_rss_mib"])
        if "llama.cpp" in result:
            row["prefill ratio"] = round(result["selfext"]["prefill_tps"] / result["llama.cpp"]["prefill_tps"], 2)
            row["decode ratio"] = round(result["selfext"]["decode_tps"] / result["llama.cpp"]["decode_tps"], 2)
        rows.append(row)
        print(row, flush=True)
    cols = list(rows[0].keys())
    cpu = _common.cpu_name()
    steal = _common.cpu_steal_fraction(steal0, _common.cpu_steal_ticks())
    print(f"\nCPU: {cpu}, {args.threads} threads, prefill {N_PREFILL} / decode {N_DECODE} tokens, "
          f"llama-cpp-python {llama_version}; median of {args.rounds} alternating rounds; steal time during "
          f"the run {'n/a' if steal is None else f'{100 * steal:.0f}%'} of CPU time\n")
    print(_common.markdown_table(rows, cols))
    import selfext_native

    path = _common.write_json("generate", cpu, {
        "device": cpu, "commit": _common.git_commit(), "versions": {**_common.versions(),
                                                                   "selfext_native": selfext_native.__version__,
                                                                   "llama_cpp_python": llama_version},
        "threads": args.threads, "n_prefill": N_PREFILL, "n_decode": N_DECODE, "rounds": args.rounds,
        "load_average": _common.load_average(), "steal_fraction": steal, "rows": rows, "all_runs": rounds_log})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
