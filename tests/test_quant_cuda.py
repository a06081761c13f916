"""Quantized weight products on CUDA (issue 8): every format against a float64 product of the
dequantized weights (the CPU op, bit for bit gguf's) and the float32 activations; embedding rows bit for
bit against the CPU dequantization; validation. Outputs are NaN-poisoned before each call (the
accumulate case is pre-filled with known finite values); inputs drawn fresh (seed printed on failure).

Tolerances, per output (t, r), with S = sum_c |w_rc| |x_tc|, and M = sum_c (|w_rc| + 2 |w0_rc|) |x_tc|
where w0 are the same blocks with every code zeroed (their min / offset term: the kernels compute
dl * sum(q x) - ml * sum(x), whose roundings scale with |dl q| + |ml| <= |w| + 2 |w0|, as in the CPU test):

* matrix-vector path (n <= 8), float32 throughout: per run an 8-term FMA chain, the scale, the min term
  and its 7-term sum (<= 18 roundings), a chain of cols / 1024 run sums per lane, 5 shuffle and 4
  warp additions, the accumulate addition: (cols / 1024 + 40) u32 M, u32 = 2^-24 (about 2.4e-6 M for
  Llama shapes).
* tensor-core path (n > 8): weights and activations each rounded to fp16 (relative u16 = 2^-11, plus at
  most 2^-25 absolute below fp16's normal range), products exact in fp32, fp32 accumulation over cols
  terms (allowing 2 roundings per addition for the tensor cores' internal adds), the weights'
  float32 dequantization before the fp16 rounding (<= 3 u32 M):
      (2 u16 + u16^2) S + 2^-25 (1 + u16) sum_c (|w_rc| + |x_tc| + 2^-25) + 2 cols u32 S + 3 u32 M
  i.e. about 1e-3 S: the bound of the same product done by any fp16 GEMM.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from selfext_native import _native  # noqa: E402
from selfext_native.errors import ArgumentError, ArrayTypeError  # noqa: E402
from selfext_native.quant import dequantize, embed_rows, matmul_quant  # noqa: E402
from test_quant_cpu import ALL, FLOATS, QT, U32, weights, zero_codes  # noqa: E402

import gguf  # noqa: E402

pytestmark = pytest.mark.cuda

U16 = 2.0**-11
SUB16 = 2.0**-25  # half the spacing of fp16 subnormals
MATVEC_MAX_N = 8  # matmul_cuda.cu's kMatvecMaxN: the path the tolerance must follow


def _dev():
    return torch.device("cuda")


def block_size(name):
    return gguf.GGML_QUANT_SIZES[QT[name]][0]


def cols_for(name, k):
    """Columns of a few blocks (odd counts); the float formats also get lengths that are not multiples
    of 8 (their partial last run)."""
    if name in FLOATS:
        return [45, 264, 1000][k]
    bs = block_size(name)
    return [3, 2, 5][k] * bs if bs == 32 else [1, 3, 2][k] * bs


def tolerance(w, w0, x, n):
    """The bound of the module docstring for the path n takes; w, w0 (rows, cols) and x (n, cols)
    float64 torch tensors on the GPU; returns (n, rows)."""
    cols = w.shape[1]
    aw, ax = w.abs(), x.abs()
    M = ax @ (aw + 2 * w0.abs()).T
    if n <= MATVEC_MAX_N:
        return (cols / 1024 + 40) * U32 * M + 1e-30
    S = ax @ aw.T
    A = aw.sum(dim=1)[None, :] + ax.sum(dim=1)[:, None] + cols * SUB16
    return (2 * U16 + U16**2 + 2 * cols * U32) * S + SUB16 * (1 + U16) * A + 3 * U32 * M + 1e-30


def make_case(name, rng, rows, cols, n):
    data = weights(name, rng, rows, cols)
    w = torch.from_numpy(dequantize(data, name, (rows, cols)).astype(np.float64)).to(_dev())
    w0 = torch.from_numpy(dequantize(zero_codes(name, data, rows, cols), name, (rows, cols)).astype(np.float64))
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[:, ::7] *= 4  # uneven magnitudes inside a block
    return (torch.from_numpy(data).to(_dev()), w, w0.to(_dev()), torch.from_numpy(x).to(_dev()))


def check(name, rng, rows, cols, n, accumulate=False, vector=False):
    wq, w, w0, x = make_case(name, rng, rows, cols, n)
    x64 = x.to(torch.float64)
    ref = x64 @ w.T
    tol = tolerance(w, w0, x64, n)
    if accumulate:
        y0 = torch.from_numpy(rng.standard_normal((n, rows)).astype(np.float32)).to(_dev())
        out = y0.clone()
        ref = ref + y0.to(torch.float64)
        tol = tol + 2 * U32 * (y0.abs().to(torch.float64) + ref.abs())
    else:
        out = torch.full((n, rows), float("nan"), dtype=torch.float32, device=_dev())
    if vector:
        y = matmul_quant(wq, name, (rows, cols), x[0], out=out[0], accumulate=accumulate)[None, :]
    else:
        y = matmul_quant(wq, name, (rows, cols), x, out=out, accumulate=accumulate)
    torch.cuda.synchronize()
    assert y.data_ptr() == out.data_ptr()
    assert torch.isfinite(y).all(), "an output was not written"
    err = (y.to(torch.float64) - ref).abs()
    ratio = (err / tol).max().item()
    assert ratio <= 1.0, f"{name} rows={rows} cols={cols} n={n}: max err {err.max().item():.3g}, err/tol {ratio:.3g}"


# --- products -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 64, 200, 512])
@pytest.mark.parametrize("name", ALL)
def test_matmul_cuda(name, n, rng):
    """Rows 1, 33 (not a multiple of any row tile) and 257 (one past 4 tiles of 64), three column counts."""
    for k, rows in enumerate([1, 33, 257]):
        check(name, rng, rows, cols_for(name, k), n)


@pytest.mark.parametrize("warp_rows", ["0", "1"])
@pytest.mark.parametrize("name", ALL)
def test_matvec_cuda_row_layouts(name, warp_rows, rng, monkeypatch):
    """n = 1 in both row layouts of narrow matrices (<= 1024 columns): each warp taking its own rows (the
    default) and the block's warps sharing them (SELFEXT_CUDA_MV_WARP_ROWS=0); row counts around the
    16-row block (1, 15, 33, 257), plain and accumulating."""
    monkeypatch.setenv("SELFEXT_CUDA_MV_WARP_ROWS", warp_rows)
    for k, rows in enumerate([1, 15, 33, 257]):
        check(name, rng, rows, cols_for(name, k % 3), 1)
    check(name, rng, 70, cols_for(name, 1), 1, accumulate=True)


@pytest.mark.parametrize("name", ALL)
def test_matmul_cuda_accumulate(name, rng):
    """y += W x on a pre-filled y, both paths."""
    for n in (1, 5, 130):
        check(name, rng, 70, cols_for(name, 1), n, accumulate=True)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K", "F16"])
def test_matmul_cuda_vector(name, rng):
    """x (cols,) -> (rows,)."""
    check(name, rng, 45, cols_for(name, 2), 1, vector=True)


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K", "Q4_0", "Q8_0"])
@pytest.mark.parametrize("n", [1, 8, 96])
def test_matmul_cuda_llama_shape(name, n, rng):
    """A Llama-3-8B shape (4096 x 4096): many column steps, the grids of the real model."""
    check(name, rng, 4096, 4096, n)


def test_matmul_cuda_current_stream(rng):
    """The product runs on torch's current stream: a side stream sees it in order."""
    wq, w, w0, x = make_case("Q4_K", rng, 300, 512, 3)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = torch.full((3, 300), float("nan"), dtype=torch.float32, device=_dev())
        y = matmul_quant(wq, "Q4_K", (300, 512), x, out=out)
        z = y * 1.0  # ordered after the kernel on the same stream
    side.synchronize()
    ref = x.to(torch.float64) @ w.T
    assert ((z.to(torch.float64) - ref).abs() <= tolerance(w, w0, x.to(torch.float64), 3)).all()


# --- the 16-bit-activation decode product (matvec_q_cuda: Q4_0, Q8_0, Q4_K, Q6_K) ----------------
#
# The activation row is prepared (float, RMSNorm, SwiGLU, or 16-bit widening) and quantized per 32
# elements to x ~ d v with |v| <= 32512, d = amax / 32512, then multiplied with integer dot products.
# Bound, per output r, against the float64 product of the dequantized weights and the float64 prepared
# row p: sum_c |w_rc| (0.51 d_b(c) + e |p_c|) -- the rounding of v (half a step, the float32 scaling in
# front of it adds < 0.01 step) and the float32 preparation (e = 8 u32 for expf and the products; 48 u32
# for RMSNorm, whose float32 sum of squares over <= 4096 terms, in 16-term thread chains, a 5-level
# shuffle tree and an 8-term chain, moves 1/rms by <= ~20 u32 with rsqrtf's 2 ulp) -- plus the float32
# accumulation of the float matvec, (cols / 1024 + 40) u32 M.
# SELFEXT_CUDA_MVQ_BITS=8 multiplies by the high bytes h = (v + 128) >> 8 only (|v - 256 h| <= 128), the
# offset / min terms with the sums of the same h: the product of the weights with the row 256 d h, so the
# rounding term becomes sum_c |w_rc| 128.51 d_b(c).

KINDS = ["float", "rmsnorm", "swiglu", "f16", "bf16"]


def _prepared(kind, rng, cols):
    """(x as the kernel takes it, norm weight or None, the prepared row in float64)."""
    if kind in ("float", "rmsnorm"):
        x = rng.standard_normal(cols).astype(np.float32)
        x[::7] *= 4
        if kind == "float":
            return torch.from_numpy(x).to(_dev()), None, torch.from_numpy(x.astype(np.float64)).to(_dev())
        nw = (0.5 + rng.random(cols)).astype(np.float32)
        x64 = x.astype(np.float64)
        p = x64 / np.sqrt(np.mean(x64 * x64) + 1e-5) * nw.astype(np.float64)
        return (torch.from_numpy(x).to(_dev()), torch.from_numpy(nw).to(_dev()), torch.from_numpy(p).to(_dev()))
    if kind == "swiglu":
        x = (rng.standard_normal(2 * cols) * 2).astype(np.float32)
        g, u = x[:cols].astype(np.float64), x[cols:].astype(np.float64)
        p = g / (1 + np.exp(-g)) * u
        return torch.from_numpy(x).to(_dev()), None, torch.from_numpy(p).to(_dev())
    dt = torch.float16 if kind == "f16" else torch.bfloat16
    x = torch.from_numpy(rng.standard_normal(cols).astype(np.float32)).to(_dev()).to(dt)
    return x, None, x.to(torch.float64)


def check_q(name, kind, rng, rows, cols, accumulate=False, bits="16"):
    data = weights(name, rng, rows, cols)
    w = torch.from_numpy(dequantize(data, name, (rows, cols)).astype(np.float64)).to(_dev())
    w0 = torch.from_numpy(dequantize(zero_codes(name, data, rows, cols), name, (rows, cols)).astype(np.float64)).to(_dev())
    x, nw, p = _prepared(kind, rng, cols)
    ws = torch.full((_native.activation_q_bytes(cols),), 0x7F, dtype=torch.uint8, device=_dev())
    prepared = torch.full((cols,), float("nan"), dtype=torch.float32, device=_dev())
    ref = w @ p
    y0 = torch.from_numpy(rng.standard_normal(rows).astype(np.float32)).to(_dev())
    out = y0.clone() if accumulate else torch.full((rows,), float("nan"), dtype=torch.float32, device=_dev())
    _native.matvec_q_cuda(torch.from_numpy(data).to(_dev()), int(QT[name]), rows, cols, x, out, accumulate, ws, kind,
                          nw, 1e-5, prepared, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "an output was not written"
    e = (48 if kind == "rmsnorm" else 8) * U32
    assert ((prepared.to(torch.float64) - p).abs() <= e * p.abs() + 1e-30).all(), "prepared row"
    amax = p.abs().reshape(-1, 32).amax(dim=1).repeat_interleave(32)
    aw = w.abs()
    step = 128.51 if bits == "8" else 0.51  # the activation rounding, in units of d
    tol = aw @ (step * amax / 32512 + e * p.abs()) + (cols / 1024 + 40) * U32 * ((aw + 2 * w0.abs()) @ p.abs())
    if accumulate:
        ref = ref + y0.to(torch.float64)
        tol = tol + 2 * U32 * (y0.abs().to(torch.float64) + ref.abs())
    err = (out.to(torch.float64) - ref).abs()
    ratio = (err / (tol + 1e-30)).max().item()
    assert ratio <= 1.0, f"{name} {kind} rows={rows} cols={cols}: max err {err.max().item():.3g}, err/tol {ratio:.3g}"


@pytest.mark.parametrize("bits", ["16", "8"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_matvec_q_cuda(name, kind, bits, rng, monkeypatch):
    """Rows 1, 17 (odd: a warp's second row missing), 300, 2205 (Q4_0: two rows per warp from 8192 rows
    on is not reached; 2205 fills many blocks with a partial last one); Q4_0 and Q8_0 with odd block
    counts, so rows start at every 2-byte offset inside a 16-byte word; column counts inside one 1 KiB
    chunk, past it, and of 9, 17 and 33 chunks with idle lanes in the last chunk."""
    small = name in ("Q4_0", "Q8_0")
    shapes = [(1, 32), (17, 96), (300, 1184), (64, 4096)] if small else [(1, 256), (17, 768), (300, 2304), (64, 4096)]
    shapes += [(2205, 1024), (40, 9216), (9, 17408), (3, 33792)]
    monkeypatch.setenv("SELFEXT_CUDA_MVQ_BITS", bits)
    for rows, cols in shapes:
        check_q(name, kind, rng, rows, cols, bits=bits)
    check_q(name, kind, rng, 33, shapes[2][1], accumulate=True, bits=bits)
    check_q(name, kind, rng, 2205, 1024, accumulate=True, bits=bits)


@pytest.mark.parametrize("bits", ["16", "8"])
@pytest.mark.parametrize("ks", ["1", "2", "4", "auto"])
@pytest.mark.parametrize("nr", ["1", "2", "4"])
@pytest.mark.parametrize("name", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_matvec_q_cuda_split_rows(name, nr, ks, bits, rng, monkeypatch):
    """KS warps sharing each row group's chunks (SELFEXT_CUDA_MVQ_KS) with NR rows per group
    (SELFEXT_CUDA_MVQ_NR): row counts that leave a block's last groups empty (1, 17, 1029), chunk counts
    below, at and above KS (1, 3, 4, 9), plain and accumulating."""
    monkeypatch.setenv("SELFEXT_CUDA_MVQ_NR", nr)
    monkeypatch.setenv("SELFEXT_CUDA_MVQ_KS", ks)
    monkeypatch.setenv("SELFEXT_CUDA_MVQ_BITS", bits)
    shapes = [(1, 1024), (17, 3072), (1029, 4096), (40, 9216)]
    if name in ("Q4_0", "Q8_0"):
        shapes.append((9, 1184))  # odd block count: rows at every 2-byte offset
    for rows, cols in shapes:
        check_q(name, "float", rng, rows, cols, bits=bits)
    check_q(name, "rmsnorm", rng, 33, 4096, accumulate=True, bits=bits)


def test_matvec_q_cuda_nonfinite_input_gives_nan_rows(rng):
    """An inf in the activations gives NaN outputs (as the float product would give inf/NaN), never a
    finite wrong value."""
    rows, cols = 8, 512
    data = weights("Q4_K", rng, rows, cols)
    x = torch.from_numpy(rng.standard_normal(cols).astype(np.float32)).to(_dev())
    x[100] = float("inf")
    ws = torch.zeros((_native.activation_q_bytes(cols),), dtype=torch.uint8, device=_dev())
    out = torch.zeros(rows, dtype=torch.float32, device=_dev())
    _native.matvec_q_cuda(torch.from_numpy(data).to(_dev()), int(QT["Q4_K"]), rows, cols, x, out, False, ws, "float",
                          None, 0.0, None, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert not torch.isfinite(out).any()


# --- embedding rows -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_embed_rows_bit_exact(name, rng):
    """Rows by id (repeats, first and last row) equal the CPU dequantization bit for bit: both are the
    float32 formula of runs.h, the product rounded on its own (__fmul_rn on the GPU, no FMA)."""
    rows, cols = 37, cols_for(name, 2)
    data = weights(name, rng, rows, cols)
    full = dequantize(data, name, (rows, cols))
    ids = np.concatenate([[0, rows - 1, 5, 5], rng.integers(0, rows, size=9)]).astype(np.int64)
    wq = torch.from_numpy(data).to(_dev())
    out = torch.full((ids.size, cols), float("nan"), dtype=torch.float32, device=_dev())
    got = embed_rows(wq, name, (rows, cols), ids, out=out).cpu().numpy()
    assert np.array_equal(got.view(np.uint32), full[ids].view(np.uint32))
    cpu = embed_rows(data, name, (rows, cols), ids)  # the CPU path of the same function
    assert np.array_equal(cpu.view(np.uint32), full[ids].view(np.uint32))


def test_embed_rows_checks_ids(rng):
    data = torch.from_numpy(weights("Q4_K", rng, 4, 256)).to(_dev())
    with pytest.raises(ArgumentError, match=r"ids\[1\] = 4 is outside \[0, 4\)"):
        embed_rows(data, "Q4_K", (4, 256), [0, 4])
    with pytest.raises(ArgumentError, match=r"ids\[0\] = -1"):
        embed_rows(data, "Q4_K", (4, 256), [-1])


# --- validation -----------------------------------------------------------------------------------

def test_cuda_validation_errors(rng):
    good = torch.from_numpy(weights("Q4_K", rng, 2, 256)).to(_dev())
    x = torch.ones(256, dtype=torch.float32, device=_dev())
    assert matmul_quant(good, "Q4_K", (2, 256), x).shape == (2,)
    with pytest.raises(ArgumentError, match=r"weight_bytes has 287 bytes.*288 bytes"):
        matmul_quant(good[:-1], "Q4_K", (2, 256), x)
    with pytest.raises(ArgumentError, match=r"cols must be a positive multiple of 256"):
        matmul_quant(good, "Q4_K", (4, 128), x[:128])
    with pytest.raises(ArgumentError, match=r"multiple of 32"):
        matmul_quant(torch.zeros(18, dtype=torch.uint8, device=_dev()), "Q4_0", (1, 16), x[:16])
    with pytest.raises(ArgumentError, match=r"qtype IQ2_XXS \(GGML id 16\) is not supported"):
        matmul_quant(torch.zeros(4096, dtype=torch.uint8, device=_dev()), 16, (1, 256), x)
    with pytest.raises(ArgumentError, match=r"x must have shape \(256,\) or \(n, 256\)"):
        matmul_quant(good, "Q4_K", (2, 256), x[:255])
    with pytest.raises(ArgumentError, match=r"out must have shape \(3, 2\)"):
        _native.matmul_quant_cuda(good, 12, 2, 256, torch.ones((3, 256), device=_dev()),
                                  torch.empty((3, 3), device=_dev()), False, 0)
    with pytest.raises(ArrayTypeError, match=r"x has dtype float64"):
        matmul_quant(good, "Q4_K", (2, 256), x.double())
    with pytest.raises(ArgumentError, match=r"accumulate=True needs out"):
        matmul_quant(good, "Q4_K", (2, 256), x, accumulate=True)


def test_cuda_mixed_devices(rng):
    cpu_w = weights("Q4_K", rng, 2, 256)
    good = torch.from_numpy(cpu_w).to(_dev())
    x = torch.ones(256, dtype=torch.float32, device=_dev())
    with pytest.raises(ArrayTypeError, match=r"weight_bytes is on cuda but x is on cpu"):
        matmul_quant(good, "Q4_K", (2, 256), x.cpu())
    with pytest.raises(ArrayTypeError, match=r"weight_bytes is on cpu but x is on cuda"):
        matmul_quant(cpu_w, "Q4_K", (2, 256), x)
    # the native entry points check too (they never trust the Python layer)
    with pytest.raises(ArrayTypeError, match=r"x is on cpu but weight_bytes is on cuda:0"):
        _native.matmul_quant_cuda(good, 12, 2, 256, x.cpu(), torch.empty(2, device=_dev()), False, 0)
    with pytest.raises(ArrayTypeError, match=r"out is on cpu"):
        _native.matmul_quant_cuda(good, 12, 2, 256, x, torch.empty(2), False, 0)
    with pytest.raises(ArrayTypeError, match=r"weight_bytes is on cpu"):
        _native.matmul_quant_cuda(torch.from_numpy(cpu_w), 12, 2, 256, x, torch.empty(2, device=_dev()), False, 0)
