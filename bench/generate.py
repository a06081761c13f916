"""Prefill (512 tokens) and decode (128 tokens, greedy) speed and peak RSS of our CPU loop, side by side
with llama-cpp-python on the same GGUF files, both timed the same way from Python.

    python bench/generate.py [--threads 2] [--models smollm2,llama-3.2-1b-q4_0,llama-3.2-1b-q4_k_m]

Each (system, model) runs in its own subprocess so peak RSS is its own. llama-cpp-python is optional
(`pip install llama-cpp-python==0.3.36`); without it only our rows are printed. Random-weight models
with Llama-3.2-1B's shapes and SmolLM2's vocabulary are written once to bench/.models/ (git-ignored)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

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
        gguf_factory.write_benchmark_model(out, preset, qtype)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="smollm2,llama-3.2-1b-q4_0,llama-3.2-1b-q4_k_m")
    ap.add_argument("--child", nargs=2, metavar=("SYSTEM", "PATH"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.threads)))
        return
    try:
        import llama_cpp

        systems = ["selfext", "llama.cpp"]
        llama_version = llama_cpp.__version__
    except ImportError:
        systems, llama_version = ["selfext"], None
    rows = []
    for name in args.models.split(","):
        path = model_path(name)
        result = {}
        for system in systems:
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", system, path],
                                 capture_output=True, text=True, check=True)
            result[system] = json.loads(out.stdout.strip().splitlines()[-1])
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
    print(f"\nCPU: {cpu}, {args.threads} threads, prefill {N_PREFILL} / decode {N_DECODE} tokens, "
          f"llama-cpp-python {llama_version}\n")
    print(_common.markdown_table(rows, cols))
    import selfext_native

    path = _common.write_json("generate", cpu, {
        "device": cpu, "commit": _common.git_commit(), "versions": {**_common.versions(),
                                                                   "selfext_native": selfext_native.__version__,
                                                                   "llama_cpp_python": llama_version},
        "threads": args.threads, "n_prefill": N_PREFILL, "n_decode": N_DECODE,
        "load_average": _common.load_average(), "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
