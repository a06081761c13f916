"""Where the GPU's logits sit against the float64 reference, per weight type and token seed (device
diagnostic for test_logits_match_reference_and_cpu): |dlogit| max / logit scale of the prefill and decode
paths against the exact reference, against the reference with float16 product inputs (act_quant="f16"),
and the 8-bit-activation reference's own distance. Usage: python scripts/diag_prefill_tol.py [seeds]"""
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from reference_model import reference_logits  # noqa: E402
from selfext_native import LLM  # noqa: E402
from test_llm_cuda import type_case  # noqa: E402  (the test's own models)

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
seeds = [int(s) for s in sys.argv[1].split(",")] if len(sys.argv) > 1 else list(range(12)) + [1958851826]
d = tempfile.mkdtemp()
print("| type | seed | prefill | decode | q8 | prefill vs f16 ref | decode vs f16 ref | f16 ref |")
print("|---|---|---|---|---|---|---|---|")
for qt in TYPES:
    path = type_case(d, qt)
    gpu = LLM(path, device="cuda")
    for s in seeds:
        toks = np.random.default_rng(s).integers(0, 300, size=45).tolist()
        ref = reference_logits(path, toks, act_quant=None).astype(np.float64)
        q8 = reference_logits(path, toks, act_quant="q8").astype(np.float64)
        r16 = reference_logits(path, toks, act_quant="f16").astype(np.float64)
        scale = np.abs(ref).max()
        pre = gpu.logits(toks).astype(np.float64)
        gpu.reset()
        dec = np.stack([gpu.eval([t])[0] for t in toks]).astype(np.float64)
        gpu.reset()
        e = lambda a, b: np.abs(a - b).max() / scale  # noqa: E731
        print(f"| {qt} | {s} | {e(pre, ref):.4f} | {e(dec, ref):.4f} | {e(q8, ref):.4f} | {e(pre, r16):.4f} | "
              f"{e(dec, r16):.4f} | {e(r16, ref):.4f} |", flush=True)
