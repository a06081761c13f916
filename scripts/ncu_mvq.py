"""One call of each 16-bit-code decode product (Llama-3-8B shapes), for `ncu -k regex:mvq_` (scripts/device_decode_ab.sh)."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import _quant_common as qc  # noqa: E402
from selfext_native import _native, quant  # noqa: E402

rng = np.random.default_rng(0)
dev = torch.device("cuda")
for name in sys.argv[1:] or ["Q4_K", "Q6_K"]:
    info = quant.block_info(name)
    for rows, cols in [(4096, 4096), (28672, 4096), (4096, 14336), (1024, 4096)]:
        w = torch.from_numpy(qc.random_weights(name, rows, cols, info["block_size"], info["block_bytes"], rng)).to(dev)
        x = torch.randn(cols, device=dev)
        y = torch.empty(rows, device=dev)
        ws = torch.empty(_native.activation_q_bytes(cols), dtype=torch.uint8, device=dev)
        _native.matvec_q_cuda(w, int(quant.qtype_id(name)), rows, cols, x, y, False, ws, "float", None, 0.0, None,
                              torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        print(name, rows, cols, "done", flush=True)
