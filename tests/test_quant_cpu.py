"""Quantized weight kernels on the CPU (issue 5): dequantization bit for bit against gguf, products
against float64, every SIMD level this CPU has, odd shapes, validation.

References are plain NumPy: gguf.quants.dequantize for the weights, and the 8-bit activation rule
written out below (not the kernel's code)."""
from __future__ import annotations

import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize

import selfext_native
from selfext_native import _native
from selfext_native.errors import ArgumentError, ArrayTypeError, BackendError
from selfext_native.quant import dequantize, matmul_quant, quantize_activations

QT = gguf.GGMLQuantizationType
LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
FLOATS = ["F32", "F16", "BF16"]
ALL = FLOATS + LEGACY + KQUANTS

U32 = 2.0**-24  # unit roundoff of float32

# Byte layout facts the block builder needs, from GGML's block structs (ggml-common.h):
# offsets of the fp16 scale fields, and the byte ranges holding codes (everything else is sub-scales).
FP16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}
CODE_BYTES = {
    "Q4_0": (2, 18), "Q4_1": (4, 20), "Q5_0": (2, 22), "Q5_1": (4, 24), "Q8_0": (2, 34),
    "Q2_K": (16, 80), "Q3_K": (0, 96), "Q4_K": (16, 144), "Q5_K": (16, 176), "Q6_K": (0, 192),
}


# --- random valid blocks --------------------------------------------------------------------------

def random_fp16_normal(rng, size, lo_exp=-8, hi_exp=-1):
    """Finite, normal float16 values with random sign, exponent in [lo_exp, hi_exp] and mantissa."""
    exp = rng.integers(lo_exp + 15, hi_exp + 16, size=size).astype(np.uint16)
    mant = rng.integers(0, 1024, size=size).astype(np.uint16)
    sign = rng.integers(0, 2, size=size).astype(np.uint16)
    return ((sign << 15) | (exp << 10) | mant).view(np.float16)


def random_blocks(name, rng, n_blocks):
    """n_blocks random but valid blocks of `name`, built byte by byte (gguf cannot quantize K-quants):
    random code and sub-scale bytes, then every byte value 0..255 written into the code bytes of the
    first blocks so every code of every bit field occurs, fp16 scales finite and normal."""
    t = QT[name]
    if name == "F32":
        return rng.standard_normal(n_blocks).astype(np.float32).view(np.uint8)
    if name == "F16":
        return random_fp16_normal(rng, n_blocks, -6, 2).view(np.uint8)
    if name == "BF16":
        bits = (rng.standard_normal(n_blocks).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return bits.view(np.uint8)
    block_bytes = gguf.GGML_QUANT_SIZES[t][1]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    lo, hi = CODE_BYTES[name]
    pattern = np.resize(np.arange(256, dtype=np.uint8), ((256 + hi - lo - 1) // (hi - lo), hi - lo))
    rows = min(n_blocks, pattern.shape[0])
    raw[:rows, lo:hi] = pattern[:rows]
    for off in FP16_FIELDS[name]:
        raw[:, off:off + 2] = random_fp16_normal(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def weights(name, rng, rows, cols):
    bs, bb = gguf.GGML_QUANT_SIZES[QT[name]]
    return random_blocks(name, rng, rows * cols // bs)


def gguf_deq(name, data, rows, cols):
    return gguf_dequantize(data.reshape(rows, -1), QT[name]).reshape(rows, cols)


def zero_codes(name, data, rows, cols):
    """The same blocks with every code byte zeroed: dequantizes to each element's offset / min term,
    which bounds the cancellation inside d * q + m (see product_tolerance)."""
    if name in FLOATS:
        return np.zeros_like(data)
    bb = gguf.GGML_QUANT_SIZES[QT[name]][1]
    z = data.copy().reshape(-1, bb)
    lo, hi = CODE_BYTES[name]
    z[:, lo:hi] = 0
    # Q3_K / Q6_K: code 0 means the offset (-4 / -32 times the sub-block scale), the term the kernels
    # subtract as an integer: it belongs in the bound as well.
    return z.reshape(-1)


# --- the 8-bit activation rule, written plainly ----------------------------------------------------

def quantize_rows(x, block):
    """x (n, cols) float32 -> (d per block (n, nb) float32, q (n, cols) int) by the rule in
    csrc/quant/q8_act.h: d = amax / 127, id = 1 / d (0 if d = 0), q = round half to even (x * id),
    all in float32."""
    n, cols = x.shape
    xb = x.reshape(n, cols // block, block)
    amax = np.abs(xb).max(axis=2)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.rint((xb * inv[:, :, None]).astype(np.float32)).astype(np.int64)
    return d, q.reshape(n, cols)


def act_block(name):
    return 256 if name in KQUANTS else 32


def used_activations(name, x):
    """The activations the kernel multiplies: x itself for float formats, d * q for integer ones."""
    if name in FLOATS:
        return x.astype(np.float64), np.zeros(x.shape)
    d, q = quantize_rows(x, act_block(name))
    blk = act_block(name)
    dfull = np.repeat(d, blk, axis=1).astype(np.float64)
    return dfull * q, dfull


def product_tolerance(name, w, w0, xa, cols):
    """|kernel - float64 product of (dequantized weights, used activations)|, element-wise bound.

    The kernel adds per-block float32 terms (integer block sum times d_w * d_a, plus the min term) in
    one chain of at most nb additions per output (nb = blocks per row; SIMD splits the chain into
    lanes, which only shortens it), with at most 6 roundings inside each term, and the reference
    weights are the float32 values d * q + m with their own 2 roundings, each relative to
    |d q| + |m| <= |w| + |w0| (w0: the same blocks with codes zeroed). Standard recursive-summation
    bound: gamma = (nb + 8) u with u = 2^-24, times sum_k (|w_k| + |w0_k|) |a_k|.
    Float formats: cols products and additions: gamma = (cols + 2) u, times sum |w| |a|."""
    mag = (np.abs(w) + np.abs(w0)) @ np.abs(xa).T  # (rows, n)
    terms = cols + 2 if name in FLOATS else cols // gguf.GGML_QUANT_SIZES[QT[name]][0] + 8
    return terms * U32 * mag.T + 1e-30


# --- fixtures -------------------------------------------------------------------------------------

LEVELS = ["scalar", "avx2", "avx512", "avx512_vnni", "amx", "neon"]


@pytest.fixture(params=LEVELS)
def simd_level(request):
    """Forces one SIMD level for the test, restores the best one afterwards; levels this CPU lacks
    are skipped, after checking that asking for them raises BackendError."""
    name = request.param
    best = selfext_native.backends()["cpu"]["simd_levels"][-1]
    try:
        selfext_native.set_simd_level(name)
    except BackendError as e:
        pytest.skip(f"SIMD level {name} not available here: {e}")
    yield name
    selfext_native.set_simd_level(best)


@pytest.fixture
def threads():
    old = selfext_native.get_num_threads()
    yield selfext_native.set_num_threads
    selfext_native.set_num_threads(old)


# --- dequantization -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_dequantize_bit_exact(name, rng):
    bs = gguf.GGML_QUANT_SIZES[QT[name]][0]
    rows, cols = 24, 4 * max(bs, 32)  # 24 * 4 = 96 blocks of each type (>= 256 bytes of code pattern)
    data = weights(name, rng, rows, cols)
    ref = gguf_deq(name, data, rows, cols)
    assert np.isfinite(ref).all()
    out = np.full((rows, cols), np.nan, dtype=np.float32)
    got = dequantize(data, name, (rows, cols), out=out)
    assert np.array_equal(got.view(np.uint32), ref.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("name", ALL)
def test_dequantize_matches_gguf_quantizer(name, rng):
    """Blocks from gguf's own quantizer, where it has one (not the K-quants)."""
    if name in KQUANTS:
        pytest.skip("gguf 0.19 cannot quantize K-quants; random blocks cover them")
    rows, cols = 8, 256
    w = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)
    data = gguf.quants.quantize(w, QT[name]).reshape(-1).view(np.uint8)
    ref = gguf_deq(name, data, rows, cols)
    got = dequantize(data, name, (rows, cols))
    assert np.array_equal(got.view(np.uint32), ref.astype(np.float32).view(np.uint32))


# --- activation quantization ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Q4_1", "Q6_K"])
def test_activation_rule(name, rng):
    """The kernel's 8-bit activations equal the rule written out in quantize_rows, byte for byte."""
    blk = act_block(name)
    x = rng.standard_normal((3, 2 * blk)).astype(np.float32)
    x[1, :blk] = 0.0  # an all-zero block: d = 0
    x[2, 5] = 1e3  # one large value
    raw = quantize_activations(name, x)
    d, q = quantize_rows(x, blk)
    if blk == 32:
        rec = raw.view(np.dtype([("d", "<f4"), ("s", "<f4"), ("sum", "<i4"), ("pad", "<i4"), ("qs", "i1", 32)]))
        qs = rec["qs"].reshape(3, -1)
        sums = q.reshape(3, -1, 32).sum(axis=2)
        assert np.array_equal(rec["sum"].reshape(3, -1), sums)
        assert np.array_equal(rec["s"].reshape(3, -1), (d * sums.astype(np.float32)).astype(np.float32))
    else:
        rec = raw.view(np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)]))
        qs = rec["qs"].reshape(3, -1)
        assert np.array_equal(rec["bsums"].reshape(3, -1), q.reshape(3, -1, 16).sum(axis=2))
    assert np.array_equal(rec["d"].reshape(3, -1), d)
    assert np.array_equal(qs, q)
    assert np.abs(q).max() <= 127


# --- products -------------------------------------------------------------------------------------

def check_product(name, rng, rows, cols, n, vector=False):
    data = weights(name, rng, rows, cols)
    w = gguf_deq(name, data, rows, cols).astype(np.float64)
    w0 = gguf_deq(name, zero_codes(name, data, rows, cols), rows, cols).astype(np.float64)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[:, ::7] *= 4  # uneven magnitudes inside a block
    xa, dfull = used_activations(name, x)
    if vector:
        out = np.full((rows,), np.nan, dtype=np.float32)
        y = matmul_quant(data, name, (rows, cols), x[0], out=out)[None, :]
    else:
        out = np.full((n, rows), np.nan, dtype=np.float32)
        y = matmul_quant(data, name, (rows, cols), x, out=out)
    assert np.isfinite(y).all(), "an output was not written"
    # 1) against the activations the kernel used, to float32 rounding
    ref = xa @ w.T
    tol = product_tolerance(name, w, w0, xa, cols)
    err = np.abs(y - ref)
    assert (err <= tol).all(), f"max err {err.max():.3g}, worst err/tol {(err / tol).max():.3g}"
    # 2) against the unquantized activations: |x - d q| <= d / 2 per element (round to nearest), so
    #    |sum_k w_k (x_k - d_k q_k)| <= sum_k |w_k| d_k / 2, plus the float32 bound of 1)
    exact = x.astype(np.float64) @ w.T
    bound = 0.5 * (dfull @ np.abs(w).T) + tol + product_tolerance(name, w, w0, x.astype(np.float64), cols)
    assert (np.abs(y - exact) <= bound).all()


# (rows, n): one row, rows not a multiple of the thread count, batch 1 / 7 / 64 / 512, and 48 x 40 for
# the AMX tiles (16 x 16: three weight tiles by two activation tiles, plus 8 activation rows left over
# for the vector kernel). Columns: a few blocks (odd counts), plus an odd, non-multiple-of-8 length for
# the float formats' tails.
SHAPES = [(1, 1), (37, 1), (1, 7), (37, 7), (19, 64), (5, 512), (48, 40)]


def cols_for(name, k):
    if name in FLOATS:
        return [45, 256][k]
    return [3, 8][k] * gguf.GGML_QUANT_SIZES[QT[name]][0]


@pytest.mark.parametrize("name", ALL)
def test_product_all_levels(name, simd_level, rng, threads):
    threads(2)
    for i, (rows, n) in enumerate(SHAPES):
        check_product(name, rng, rows, cols_for(name, i % 2), n)
    check_product(name, rng, 13, cols_for(name, 1), 1, vector=True)


@pytest.mark.parametrize("name", ["Q4_1", "Q8_0", "Q4_K", "Q6_K", "F32"])
@pytest.mark.parametrize("n_threads", [1, 3])
def test_product_threads(name, n_threads, rng, threads):
    """Thread counts that do not divide the rows; a taller matrix so every thread gets work."""
    threads(n_threads)
    check_product(name, rng, 101, cols_for(name, 1), 1)
    check_product(name, rng, 67, cols_for(name, 0), 9)


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K"])
def test_product_levels_agree_on_large(name, rng, threads):
    """A decode-sized and a prefill-sized product, every level this CPU has, same inputs."""
    threads(2)
    rows, cols = 64, 2048
    data = weights(name, rng, rows, cols)
    x = rng.standard_normal((33, cols)).astype(np.float32)
    w = gguf_deq(name, data, rows, cols).astype(np.float64)
    xa, _ = used_activations(name, x)
    tol = product_tolerance(name, w, gguf_deq(name, zero_codes(name, data, rows, cols), rows, cols), xa, cols)
    levels = selfext_native.backends()["cpu"]["simd_levels"]
    try:
        for level in levels:
            selfext_native.set_simd_level(level)
            y = matmul_quant(data, name, (rows, cols), x)
            assert (np.abs(y - xa @ w.T) <= tol).all(), level
    finally:
        selfext_native.set_simd_level(levels[-1])


def test_simd_env_variable():
    """SELFEXT_SIMD forces a level at start; an unavailable one raises BackendError, never crashes."""
    code = (
        "import numpy as np, selfext_native as s\n"
        "from selfext_native.quant import matmul_quant\n"
        "print(s.backends()['cpu']['simd_level'])\n"
        "w = np.zeros(18, np.uint8)\n"
        "print(matmul_quant(w, 'Q4_0', (1, 32), np.ones(32, np.float32))[0])\n"
    )
    env = dict(os.environ, SELFEXT_SIMD="scalar")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["scalar", "0.0"]
    unavailable = "neon" if "avx2" in selfext_native.backends()["cpu"]["simd_levels"] else "avx2"
    env["SELFEXT_SIMD"] = unavailable
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "BackendError" in r.stderr, (r.returncode, r.stderr[-500:])


# --- validation -----------------------------------------------------------------------------------

def test_validation_errors(rng):
    x = np.ones(256, np.float32)
    good = weights("Q4_K", rng, 2, 256)
    assert matmul_quant(good, "Q4_K", (2, 256), x).shape == (2,)
    with pytest.raises(ArgumentError, match=r"weight_bytes has 287 bytes.*288 bytes"):
        matmul_quant(good[:-1], "Q4_K", (2, 256), x)
    with pytest.raises(ArgumentError, match=r"multiple of 256"):
        matmul_quant(good, "Q4_K", (4, 128), np.ones(128, np.float32))
    with pytest.raises(ArgumentError, match=r"multiple of 32"):
        matmul_quant(np.zeros(18, np.uint8), "Q4_0", (1, 16), np.ones(16, np.float32))
    with pytest.raises(ArgumentError, match=r"x must have shape \(256,\) or \(n, 256\)"):
        matmul_quant(good, "Q4_K", (2, 256), np.ones(255, np.float32))
    with pytest.raises(ArgumentError, match=r"out must have shape \(3, 2\)"):
        _native.matmul_quant(good, 12, 2, 256, np.ones((3, 256), np.float32), np.empty((3, 3), np.float32))
    with pytest.raises(ArrayTypeError, match=r"x has dtype float64"):
        _native.matmul_quant(good, 12, 2, 256, np.ones(256), np.empty(2, np.float32))
    with pytest.raises(ArgumentError, match=r"rows must be positive"):
        matmul_quant(good, "Q4_K", (0, 256), x)
    with pytest.raises(ArgumentError, match=r"unknown qtype 'Q9_9'"):
        matmul_quant(good, "Q9_9", (2, 256), x)
    with pytest.raises(ArgumentError, match=r"out must have shape \(2, 256\)"):
        dequantize(good, "Q4_K", (2, 256), out=np.empty((2, 255), np.float32))


@pytest.mark.parametrize("qtype,name", [
    (9, "Q8_1"), (15, "Q8_K"), (16, "IQ2_XXS"), (20, "IQ4_NL"), (23, "IQ4_XS"), (29, "IQ1_M"),
    (34, "TQ1_0"), (35, "TQ2_0"), (4, "Q4_2"), (28, "F64"), (39, "MXFP4"),
])
def test_unsupported_types_named(qtype, name):
    with pytest.raises(ArgumentError, match=rf"qtype {name} \(GGML id {qtype}\) is not supported"):
        matmul_quant(np.zeros(4096, np.uint8), qtype, (1, 256), np.ones(256, np.float32))
    with pytest.raises(ArgumentError, match=rf"qtype {name} "):
        dequantize(np.zeros(4096, np.uint8), name, (1, 256))


def test_unknown_type_id():
    with pytest.raises(ArgumentError, match=r"qtype 99 is not a GGML type id"):
        matmul_quant(np.zeros(18, np.uint8), 99, (1, 32), np.ones(32, np.float32))


def test_unavailable_level_raises():
    levels = selfext_native.backends()["cpu"]["simd_levels"]
    missing = [lv for lv in LEVELS if lv not in levels]
    for lv in missing:
        with pytest.raises(BackendError):
            selfext_native.set_simd_level(lv)
    with pytest.raises(ArgumentError):
        selfext_native.set_simd_level("sse9")
    assert selfext_native.backends()["cpu"]["simd_level"] == levels[-1]


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K"])
def test_scalar_rule_turns_nonfinite_activations_into_nan(name, rng):
    """A NaN or an infinity among the activations makes the row's products NaN (the scalar rule gives the
    block a NaN scale; int(NaN) would be undefined behaviour), never a silently finite value."""
    best = selfext_native.backends()["cpu"]["simd_levels"][-1]
    selfext_native.set_simd_level("scalar")
    try:
        rows, cols = 5, 512
        data = weights(name, rng, rows, cols)
        x = rng.standard_normal((3, cols)).astype(np.float32)
        x[1, 7] = np.nan
        x[2, 300] = np.inf
        y = matmul_quant(data, name, (rows, cols), x)
        assert np.isfinite(y[0]).all()
        assert np.isnan(y[1]).all() and np.isnan(y[2]).all()
    finally:
        selfext_native.set_simd_level(best)
