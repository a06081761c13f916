"""Decode steps for a profiler: prefill 512 tokens, then --steps greedy decode steps on CUDA.

    nsys profile --cuda-graph-trace=node -t cuda -o /tmp/prof python bench/profile_decode.py smollm2
    nsys stats --report cuda_gpu_kern_sum /tmp/prof.nsys-rep

MODEL is a bench/generate.py model name (smollm2, llama-3-8b-q4_0, ...) or one of SHAPES below. Prints the mean step time; the
per-kernel table comes from the profiler (scripts/device_run.sh, stage nsys)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import generate  # noqa: E402


SHAPES = {  # random weights with a synthetic tokenizer: nothing to bring onto the device machine
    "smollm2-shapes": ("smollm2-135m", {"default": "Q4_1", "token_embd": "Q8_0"}),
    "llama-3-8b-q4_k_m-shapes": ("llama-3-8b", {"default": "Q4_K", "attn_v": "Q6_K", "ffn_down": "Q6_K",
                                                "token_embd": "Q6_K"}),
    "llama-3-8b-q4_0-shapes": ("llama-3-8b", "Q4_0"),
}


def model_path(name: str) -> str:
    if name not in SHAPES:
        return generate.model_path(name)
    import gguf_factory

    out = Path(__file__).resolve().parent / ".models" / f"{name}.gguf"
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        preset, qtype = SHAPES[name]
        gguf_factory.write_benchmark_model(out, preset, qtype, tokenizer="gpt2-padded")
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--torch-profile", action="store_true",
                    help="trace the steps with torch.profiler (CUPTI) and print the per-kernel table")
    args = ap.parse_args()
    from selfext_native import LLM

    llm = LLM(model_path(args.model), n_ctx=8192, device="cuda", n_batch=512)
    model = llm._model
    ids = np.random.default_rng(0).integers(100, 10000, size=512).astype(np.int32)
    tok = int(np.argmax(model.forward(ids, False)[0]))
    one = np.empty(1, dtype=np.int32)
    for _ in range(8):  # graph capture and warm-up
        one[0] = tok
        tok = int(np.argmax(model.forward(one, False)[0]))
    def steps():
        nonlocal tok
        for _ in range(args.steps):
            one[0] = tok
            tok = int(np.argmax(model.forward(one, False)[0]))

    t = time.perf_counter()
    steps()
    print(f"{args.model}: {(time.perf_counter() - t) / args.steps * 1e3:.3f} ms per decode step (end to end; "
          f"{model.decode_path})")
    if args.torch_profile:
        import torch
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            steps()
            torch.cuda.synchronize()
        rows = []
        for e in prof.key_averages():
            t_us = getattr(e, "device_time_total", None)
            if t_us is None:
                t_us = getattr(e, "cuda_time_total", 0)
            if t_us and e.count:
                rows.append((t_us / args.steps, e.count / args.steps, e.key))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows if not r[2].startswith("cuda"))
        print(f"per decode step, device time by kernel (sum {total:.1f} us; launches/step, us/step, us/launch):")
        for us, n, key in rows[:25]:
            name = key.replace("selfext::(anonymous namespace)::", "").replace("selfext::", "").replace("(selfext", "(")
            print(f"{n:7.1f} {us:9.1f} {us / max(n, 1e-9):8.2f}  {name[:160]}")


if __name__ == "__main__":
    main()
