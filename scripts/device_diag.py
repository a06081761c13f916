"""Isolates how an invalid argument reaches Python on the device build: each case runs in its own
process (a crash kills only that case) and prints the exception type, or dies with the signal."""
import subprocess
import sys

CASES = {
    "rms_norm positional ArgumentError": "_native.rms_norm(x, w[:-1], x.clone(), 1e-5, s)",
    "rms_norm positional ArrayTypeError": "_native.rms_norm(x, w.cpu(), x.clone(), 1e-5, s)",
    "se_cuda positional ArgumentError": "_native.self_extend_attention_cuda(q, q, q, q.clone(), inv, 1.0, 0, 8, 'norm', 64, 0.125, s)",
    "se_cuda keyword ArgumentError": "_native.self_extend_attention_cuda(q=q, k=q, v=q, out=q.clone(), inv_freq=inv, mscale=1.0, group=0, window=8, rope_style='norm', rope_dim=64, scale=0.125, stream=s)",
    "se_cuda positional ArrayTypeError": "_native.self_extend_attention_cuda(q, q.cpu(), q, q.clone(), inv, 1.0, 2, 8, 'norm', 64, 0.125, s)",
    "se_cpu keyword ArgumentError": "_native.self_extend_attention(q.cpu().float(), q.cpu().float(), q.cpu().float(), q.cpu().float(), group=0, window=4, inv_freq=inv, rope_dim=64, scale=0.1)",
    "plain C++ invalid_argument via pybind": "_native.set_simd_level('nonsense')",
}
PRE = """
import numpy as np, torch
from selfext_native import _native
x = torch.randn(4, 64, device='cuda'); w = torch.ones(64, device='cuda'); s = torch.cuda.current_stream().cuda_stream
q = torch.randn(8, 4, 64, device='cuda', dtype=torch.float16); inv = np.ones(32)
try:
    {call}
    print('no exception')
except BaseException as e:
    print(type(e).__module__, type(e).__name__, str(e)[:80])
"""
for name, call in CASES.items():
    r = subprocess.run([sys.executable, "-c", PRE.format(call=call)], capture_output=True, text=True)
    tail = (r.stdout.strip() or r.stderr.strip().splitlines()[-1] if (r.stdout or r.stderr) else "")
    print(f"{name}: rc={r.returncode} {tail[:160]}")
