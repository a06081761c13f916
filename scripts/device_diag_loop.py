"""Device diagnosis: where the CUDA loop and the CPU part on the committed Flip-Flop RoPE model (Q8_0)."""
import os
import sys

import numpy as np

from selfext_native import LLM

path = os.path.join(os.path.dirname(__file__), "..", "tests", "data", sys.argv[1] if len(sys.argv) > 1 else "rope_flipflop_q8_0.gguf")
toks = np.random.default_rng(0).integers(0, 8, size=40).tolist()
cpu = LLM(path, device="cpu", n_threads=4, n_ctx=64).logits(toks)
gpu = LLM(path, device="cuda", n_ctx=64)
pre = gpu.logits(toks)
gpu.reset()
dec = np.stack([gpu.eval([t])[0] for t in toks])
os.environ["SELFEXT_CUDA_GRAPHS"] = "0"
g2 = LLM(path, device="cuda", n_ctx=64)
dec2 = np.stack([g2.eval([t])[0] for t in toks])
g3 = LLM(path, device="cuda", n_ctx=64, n_batch=8)
ch8 = g3.logits(toks)
np.set_printoptions(precision=3, linewidth=200)
for name, x in (("prefill", pre), ("decode graphs", dec), ("decode eager", dec2), ("chunks of 8", ch8)):
    print(name, "per-row max |d| vs cpu:", np.abs(x - cpu).max(axis=1))
