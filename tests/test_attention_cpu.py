"""CPU attention kernels (issue 4) against the float64 references in tests/reference.py.

Parameters are sampled pairwise (a fixed greedy all-pairs design over the factors of the issue) plus a few
large cases; the data are fresh random draws (seed printed on failure, see conftest.rng). Every native
call writes into an output poisoned with NaN, so an element the kernel skips fails the comparison.
"""
from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

import selfext_native
from selfext_native import _native
from selfext_native.attention import cope_attention, rope_frequencies, self_extend_attention
from selfext_native.errors import ArgumentError, ArrayTypeError

from reference import attention_ref, cope_ref, inv_freq_ref, rope_ref, self_extend_ref

# Relative error ||out - ref|| / ||ref|| allowed, by output dtype. float32: the bound. float16
# output: the rounding of the output itself (2^-11 relative) dominates.
REL_TOL = {np.float32: 1e-5, np.float16: 1e-3}

LEVELS = ["scalar", "avx2", "avx512", "avx512_vnni", "amx"]


def cope_tol(q, k, e, dtype=np.float32) -> float:
    """The float32 bound for CoPE: an output's relative error follows the absolute error of its logits,
    and a logit s + z of magnitude up to M = scale*max|q||k| + max|q||e| (Cauchy-Schwarz), summed over D
    float32 products, carries at most D * 2^-24 * M of rounding (the deterministic dot-product bound
    gamma_D = D*u; a random walk would give sqrt(D)*u*M, which seed 229116975 exceeded). With saturated
    gates (|q|, |k| ~ 12) M is ~100; in between the generic 1e-5 applies."""
    if dtype != np.float32:
        return REL_TOL[dtype]
    D = q.shape[-1]
    qn = np.linalg.norm(q.astype(np.float64), axis=-1).max()
    kn = np.linalg.norm(k.astype(np.float64), axis=-1).max()
    en = np.linalg.norm(e.astype(np.float64), axis=-1).max()
    M = qn * kn / math.sqrt(D) + qn * en
    return max(REL_TOL[np.float32], D * 2.0**-24 * M)


def rel_err(out, ref) -> float:
    out = np.asarray(out, dtype=np.float64)
    assert np.all(np.isfinite(out)), "output has non-finite values (an element left unwritten?)"
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


@pytest.fixture
def simd_level(request):
    """Force a SIMD level for one test, restore the previous one afterwards."""
    name = request.param
    previous = _native.simd_level()
    try:
        selfext_native.set_simd_level(name)
    except selfext_native.BackendError as e:
        pytest.skip(f"SIMD level {name} not available here: {e}")
    yield name
    selfext_native.set_simd_level(previous)


def pairwise(factors: dict, seed: int = 0) -> list[dict]:
    """A small set of cases covering every pair of factor values at least once (greedy, deterministic)."""
    names = list(factors)
    uncovered = {
        (a, va, b, vb)
        for a, b in itertools.combinations(names, 2)
        for va in range(len(factors[a]))
        for vb in range(len(factors[b]))
    }
    rnd = random.Random(seed)
    cases = []
    while uncovered:
        best, best_cov = None, -1
        for _ in range(60):
            cand = {n: rnd.randrange(len(factors[n])) for n in names}
            # start from one uncovered pair so progress is guaranteed (min, not set order: the same
            # cases in every process, whatever the hash seed)
            a, va, b, vb = min(uncovered) if not cases or rnd.random() < 0.5 else rnd.choice(sorted(uncovered))
            cand[a], cand[b] = va, vb
            cov = sum((x, cand[x], y, cand[y]) in uncovered for x, y in itertools.combinations(names, 2))
            if cov > best_cov:
                best, best_cov = cand, cov
        for x, y in itertools.combinations(names, 2):
            uncovered.discard((x, best[x], y, best[y]))
        cases.append({n: factors[n][best[n]] for n in names})
    return cases


def _inputs(rng, T_q, T_k, H, H_kv, D, q_dtype=np.float32, kv_dtype=np.float32):
    q = rng.standard_normal((T_q, H, D)).astype(q_dtype)
    k = rng.standard_normal((T_k, H_kv, D)).astype(kv_dtype)
    v = rng.standard_normal((T_k, H_kv, D)).astype(kv_dtype)
    return q, k, v


def _poisoned(q):
    return np.full(q.shape, np.nan, dtype=q.dtype)


def se_native(q, k, v, *, group, window, inv_freq, style="norm", mscale=1.0, scale=None):
    out = _poisoned(q)
    D = q.shape[2]
    _native.self_extend_attention(
        q, k, v, out, group=group, window=window, inv_freq=np.ascontiguousarray(inv_freq, np.float64),
        rope_dim=2 * len(inv_freq), scale=1 / math.sqrt(D) if scale is None else scale, mscale=mscale,
        rope_style=style,
    )
    return out


def cope_native(q, k, v, e, *, scale_pos_logits=False, inv_freq=None, style="norm", scale=None):
    out = _poisoned(q)
    D = q.shape[2]
    _native.cope_attention(
        q, k, v, e, out, scale=1 / math.sqrt(D) if scale is None else scale, scale_pos_logits=scale_pos_logits,
        inv_freq=inv_freq, rope_dim=0 if inv_freq is None else 2 * len(inv_freq), rope_style=style,
    )
    return out


def _t_q(mode: str, T_k: int) -> int:
    return {"prefill": T_k, "chunk": max(2, T_k // 3 + 1), "decode": 1}[mode]


def _freqs(rope: str, D: int):
    if rope == "full":
        return inv_freq_ref(10000.0, D)
    if rope == "partial":  # partial rotary: half the head rotated (e.g. phi / stablelm)
        return inv_freq_ref(10000.0, D // 2)
    # Llama-3.1-style per-pair factors: high frequencies kept, low ones divided by 8, a ramp between
    P = D // 2
    factors = np.concatenate([np.ones(P // 2), np.linspace(1.0, 8.0, P - P // 2)])
    return inv_freq_ref(500000.0, D, factors=factors)


# ---------------------------------------------------------------------------------------------------
# SelfExtend

SE_FACTORS = {
    "D": [64, 80, 96, 128],
    "ratio": [1, 3, 4, 8],
    "G": [1, 2, 4, 8],
    "W": [1, 7, 64, 512, "ge_Tk"],
    "style": ["norm", "neox"],
    "rope": ["full", "partial", "llama31"],
    "mode": ["prefill", "chunk", "decode"],
    "dtypes": ["f32", "f16", "f32q_f16kv"],
    "T_k": [67, 203, 531],
    "level": LEVELS,
}
SE_CASES = pairwise(SE_FACTORS, seed=4)

DTYPES = {"f32": (np.float32, np.float32), "f16": (np.float16, np.float16), "f32q_f16kv": (np.float32, np.float16)}


@pytest.mark.parametrize("case", SE_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_self_extend_pairwise(rng, case):
    previous = _native.simd_level()
    try:
        selfext_native.set_simd_level(case["level"])
    except selfext_native.BackendError as e:
        pytest.skip(f"SIMD level {case['level']} not available here: {e}")
    try:
        T_k, D = case["T_k"], case["D"]
        H_kv = 1 if case["ratio"] == 8 else 2
        H = H_kv * case["ratio"]
        q_dt, kv_dt = DTYPES[case["dtypes"]]
        q, k, v = _inputs(rng, _t_q(case["mode"], T_k), T_k, H, H_kv, D, q_dt, kv_dt)
        W = T_k + 5 if case["W"] == "ge_Tk" else case["W"]
        f = _freqs(case["rope"], D)
        out = se_native(q, k, v, group=case["G"], window=W, inv_freq=f, style=case["style"])
        ref = self_extend_ref(q, k, v, group=case["G"], window=W, inv_freq=f, style=case["style"])
        assert rel_err(out, ref) <= REL_TOL[q_dt]
    finally:
        selfext_native.set_simd_level(previous)


@pytest.mark.parametrize(
    "T_q,T_k,H,H_kv,D,G,W",
    [
        (1, 4099, 8, 2, 128, 4, 512),      # decode over a long cache, many split-K chunks
        (64, 4099, 4, 1, 64, 8, 1000),     # a chunk at the end of a long prefix
        (4099, 4099, 2, 1, 64, 4, 1024),   # a long prefill
    ],
)
def test_self_extend_large(rng, T_q, T_k, H, H_kv, D, G, W):
    q, k, v = _inputs(rng, T_q, T_k, H, H_kv, D)
    f = inv_freq_ref(10000.0, D)
    out = se_native(q, k, v, group=G, window=W, inv_freq=f, style="neox", mscale=1.1)
    ref = self_extend_ref(q, k, v, group=G, window=W, inv_freq=f, style="neox", mscale=1.1)
    assert rel_err(out, ref) <= REL_TOL[np.float32]


@pytest.mark.parametrize("simd_level", LEVELS, indirect=True)
@pytest.mark.parametrize("variant", ["G1", "W_ge_Tk"])
@pytest.mark.parametrize("T_q", [1, 50, 300])
def test_self_extend_is_plain_rope_attention(rng, simd_level, variant, T_q):
    """G = 1, or W >= T_k, is causal RoPE attention; also torch SDPA (float64) on rotated inputs with an
    explicit bottom-right causal mask (is_causal=True would align top-left when T_q < T_k)."""
    torch = pytest.importorskip("torch")
    T_k, H, H_kv, D = 300, 6, 2, 64
    q, k, v = _inputs(rng, T_q, T_k, H, H_kv, D)
    f = inv_freq_ref(10000.0, D)
    G, W = (1, 3) if variant == "G1" else (4, T_k)
    out = se_native(q, k, v, group=G, window=W, inv_freq=f)
    qr = rope_ref(q, np.arange(T_k - T_q, T_k), f, "norm")
    kr = rope_ref(k, np.arange(T_k), f, "norm")
    plain = attention_ref(qr, kr, v, 1 / math.sqrt(D))
    assert rel_err(out, plain) <= REL_TOL[np.float32]
    rep = H // H_kv
    tq = torch.from_numpy(qr).permute(1, 0, 2)[None]
    tk = torch.from_numpy(np.repeat(kr, rep, axis=1)).permute(1, 0, 2)[None]
    tv = torch.from_numpy(np.repeat(v.astype(np.float64), rep, axis=1)).permute(1, 0, 2)[None]
    mask = torch.from_numpy(np.arange(T_k)[None, :] <= np.arange(T_k - T_q, T_k)[:, None])
    sdpa = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)[0].permute(1, 0, 2)
    assert rel_err(out, sdpa.numpy()) <= REL_TOL[np.float32]


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_self_extend_chunked_prefill(rng, chunk):
    T_k, H, H_kv, D, G, W = 150 if chunk == 1 else 333, 4, 2, 80, 4, 21
    q, k, v = _inputs(rng, T_k, T_k, H, H_kv, D)
    f = inv_freq_ref(10000.0, D)
    full = se_native(q, k, v, group=G, window=W, inv_freq=f)
    parts = []
    for s in range(0, T_k, chunk):
        e = min(T_k, s + chunk)
        parts.append(se_native(q[s:e], k[:e], v[:e], group=G, window=W, inv_freq=f))
    assert rel_err(np.concatenate(parts), full.astype(np.float64)) <= REL_TOL[np.float32]


def test_self_extend_strided_cache_layout(rng):
    """k, v views of a (n_kv_heads, n_ctx, D) cache (t stride D, h stride n_ctx*D) and a strided q."""
    n_ctx, T_k, H, H_kv, D = 512, 301, 8, 2, 64
    cache_k = rng.standard_normal((H_kv, n_ctx, D)).astype(np.float16)
    cache_v = rng.standard_normal((H_kv, n_ctx, D)).astype(np.float16)
    k = cache_k[:, :T_k].transpose(1, 0, 2)
    v = cache_v[:, :T_k].transpose(1, 0, 2)
    q = rng.standard_normal((H, 40, D)).astype(np.float32).transpose(1, 0, 2)
    f = inv_freq_ref(10000.0, D)
    for T_q in (40, 1):
        out = se_native(q[-T_q:], k, v, group=2, window=64, inv_freq=f)
        ref = self_extend_ref(q[-T_q:], k, v, group=2, window=64, inv_freq=f)
        assert rel_err(out, ref) <= REL_TOL[np.float32]


# ---------------------------------------------------------------------------------------------------
# CoPE

COPE_FACTORS = {
    "npos": [2, 16, 64, 1024],
    "D": [64, 80, 96, 128],
    "ratio": [1, 3, 4, 8],
    "per_head": [False, True],
    "scale_z": [False, True],
    "gates": ["random", "near1", "near0"],
    "rope": ["none", "norm", "neox"],
    "mode": ["prefill", "chunk", "decode"],
    "dtypes": ["f32", "f16", "f32q_f16kv"],
    "T_k": [67, 203, 531],
    "level": LEVELS,
}
COPE_CASES = pairwise(COPE_FACTORS, seed=5)


def _cope_inputs(rng, gates, T_q, T_k, H, H_kv, D):
    q, k, v = _inputs(rng, T_q, T_k, H, H_kv, D)
    if gates != "random":
        # q and k share one direction, so <q, k> * scale is about +-18 for every pair: float32 gates are
        # exactly 1 (positions land on integers, then on the clamp) or about 1.5e-8.
        u = rng.standard_normal(D)
        u /= np.linalg.norm(u)
        mag = math.sqrt(18.0 * math.sqrt(D))
        sign = 1.0 if gates == "near1" else -1.0
        q = (0.05 * q + mag * u).astype(np.float32)
        k = (0.05 * k + sign * mag * u).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("case", COPE_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_cope_pairwise(rng, case):
    previous = _native.simd_level()
    try:
        selfext_native.set_simd_level(case["level"])
    except selfext_native.BackendError as e:
        pytest.skip(f"SIMD level {case['level']} not available here: {e}")
    try:
        T_k, D = case["T_k"], case["D"]
        H_kv = 1 if case["ratio"] == 8 else 2
        H = H_kv * case["ratio"]
        q, k, v = _cope_inputs(rng, case["gates"], _t_q(case["mode"], T_k), T_k, H, H_kv, D)
        q_dt, kv_dt = DTYPES[case["dtypes"]]
        q, k, v = q.astype(q_dt), k.astype(kv_dt), v.astype(kv_dt)
        shape = (H, case["npos"], D) if case["per_head"] else (case["npos"], D)
        e = rng.standard_normal(shape).astype(q_dt)
        f = None if case["rope"] == "none" else inv_freq_ref(10000.0, D)
        style = "norm" if case["rope"] == "none" else case["rope"]
        out = cope_native(q, k, v, e, scale_pos_logits=case["scale_z"], inv_freq=f, style=style)
        ref = cope_ref(q, k, v, e, scale_pos_logits=case["scale_z"], inv_freq=f, style=style)
        assert rel_err(out, ref) <= max(REL_TOL[q_dt], cope_tol(q, k, e, q_dt))
    finally:
        selfext_native.set_simd_level(previous)


@pytest.mark.parametrize(
    "T_q,T_k,H,H_kv,D,npos,gates",
    [
        (1, 4099, 8, 2, 128, 64, "random"),
        (64, 4099, 4, 1, 64, 1024, "near1"),
        (2051, 2051, 2, 1, 64, 16, "random"),
    ],
)
def test_cope_large(rng, T_q, T_k, H, H_kv, D, npos, gates):
    q, k, v = _cope_inputs(rng, gates, T_q, T_k, H, H_kv, D)
    e = rng.standard_normal((npos, D)).astype(np.float32)
    out = cope_native(q, k, v, e)
    assert rel_err(out, cope_ref(q, k, v, e)) <= cope_tol(q, k, e)


@pytest.mark.parametrize("simd_level", LEVELS, indirect=True)
def test_cope_positions_on_integers_and_clamp(rng, simd_level):
    """Gates exactly 1: p_ij = i - j + 1 on integers, clamped at npos_max - 1 after npos_max - 2 keys."""
    T_k, H, D, npos = 90, 2, 64, 16
    q, k, v = _cope_inputs(rng, "near1", T_k, T_k, H, 1, D)
    s = q[:, 0].astype(np.float64) @ k[:, 0].astype(np.float64).T / 8.0
    assert s[np.tril_indices(T_k)].min() > 17.0  # every gate rounds to 1.0 in float32
    e = rng.standard_normal((H, npos, D)).astype(np.float32)
    for scale_z in (False, True):
        out = cope_native(q, k, v, e, scale_pos_logits=scale_z)
        assert rel_err(out, cope_ref(q, k, v, e, scale_pos_logits=scale_z)) <= REL_TOL[np.float32]


def _split_chunk(H_kv: int, D: int) -> int:
    """Keys per chunk of the split-K CoPE decode (cope_cpu.cpp, SelfExtend's decode rule: ~64 Ki floats of
    K per chunk, a multiple of 16 in [16, 256]); used only to place the cases' clamps and remainders."""
    return min(256, max(16, 65536 // (H_kv * D) // 16 * 16))


# Split-K decode and short chunks (T_q <= 8): (T_q, T_k, H, H_kv, D, npos, gates, per_head, scale_z, dtypes).
# With gates exactly 1 the last query's positions are i - j + 1, so npos places the clamp: chunks of 256
# keys at (H_kv=1, D=64) and T_k = 700 give [0, 256), [256, 512), [512, 700).
SPLIT_CASES = [
    (1, 700, 4, 1, 64, 16, "near1", False, False, "f32"),  # clamp inside the last chunk
    (1, 700, 4, 1, 64, 300, "near1", True, True, "f32"),  # clamp one chunk earlier: carried across
    (3, 700, 4, 1, 64, 189, "near1", False, True, "f32"),  # last chunk's total is exactly npos_max - 1
    (1, 1000, 16, 8, 128, 64, "random", True, False, "f32"),  # 16 chunks of 64, the last one 40 keys
    (8, 1000, 16, 8, 128, 200, "random", False, True, "f16"),  # clamp a few chunks back, 8 queries
    (1, 531, 6, 2, 96, 1024, "near0", True, True, "f32q_f16kv"),  # never clamped, tiny gates
    (5, 533, 6, 2, 80, 64, "random", True, False, "f32"),
    (2, 17, 3, 1, 64, 2, "near1", False, False, "f32"),  # less than one chunk, npos_max = 2
    (1, 4099, 9, 3, 64, 1024, "random", False, False, "f32"),  # 17 chunks, clamp ~2k keys back
]


@pytest.mark.parametrize("simd_level", LEVELS, indirect=True)
@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_cope_split_decode(rng, simd_level, case):
    T_q, T_k, H, H_kv, D, npos, gates, per_head, scale_z, dts = case
    assert T_k % _split_chunk(H_kv, D) != 0  # a partial last chunk in every case
    q, k, v = _cope_inputs(rng, gates, T_q, T_k, H, H_kv, D)
    q_dt, kv_dt = DTYPES[dts]
    q, k, v = q.astype(q_dt), k.astype(kv_dt), v.astype(kv_dt)
    e = rng.standard_normal((H, npos, D) if per_head else (npos, D)).astype(q_dt)
    out = cope_native(q, k, v, e, scale_pos_logits=scale_z)
    ref = cope_ref(q, k, v, e, scale_pos_logits=scale_z)
    assert rel_err(out, ref) <= max(REL_TOL[q_dt], cope_tol(q, k, e, q_dt))


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_cope_chunked_prefill(rng, chunk):
    T_k, H, H_kv, D, npos = 150 if chunk == 1 else 333, 4, 2, 96, 16
    q, k, v = _inputs(rng, T_k, T_k, H, H_kv, D)
    e = rng.standard_normal((npos, D)).astype(np.float32)
    full = cope_native(q, k, v, e)
    parts = []
    for s in range(0, T_k, chunk):
        end = min(T_k, s + chunk)
        parts.append(cope_native(q[s:end], k[:end], v[:end], e))
    assert rel_err(np.concatenate(parts), full.astype(np.float64)) <= REL_TOL[np.float32]


# ---------------------------------------------------------------------------------------------------
# Python API: array kinds, defaults, RoPE settings


def test_api_numpy_and_torch(rng):
    torch = pytest.importorskip("torch")
    T, H, H_kv, D = 70, 4, 2, 64
    q, k, v = _inputs(rng, T, T, H, H_kv, D)
    out = self_extend_attention(q, k, v, group=2, window=16)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == q.shape
    ref = self_extend_ref(q, k, v, group=2, window=16, inv_freq=inv_freq_ref(10000.0, D))
    assert rel_err(out, ref) <= REL_TOL[np.float32]
    tout = self_extend_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), group=2, window=16)
    assert isinstance(tout, torch.Tensor) and tout.dtype == torch.float32
    assert rel_err(tout.numpy(), ref) <= REL_TOL[np.float32]
    # bfloat16 in, bfloat16 out: compare with the reference on the bfloat16 values
    qb, kb, vb = (torch.from_numpy(a).to(torch.bfloat16) for a in (q, k, v))
    bout = self_extend_attention(qb, kb, vb, group=2, window=16)
    assert bout.dtype == torch.bfloat16
    refb = self_extend_ref(*(a.double().numpy() for a in (qb, kb, vb)), group=2, window=16,
                           inv_freq=inv_freq_ref(10000.0, D))
    assert rel_err(bout.double().numpy(), refb) <= 8e-3  # bfloat16 output rounding (2^-8)
    e = rng.standard_normal((16, D)).astype(np.float32)
    cout = cope_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), torch.from_numpy(e))
    assert isinstance(cout, torch.Tensor)
    assert rel_err(cout.numpy(), cope_ref(q, k, v, e)) <= REL_TOL[np.float32]


def test_api_rope_settings(rng):
    T, H, D = 40, 2, 96
    q, k, v = _inputs(rng, T, T, H, 1, D)
    factors = np.linspace(1.0, 4.0, 32)
    out = self_extend_attention(q, k, v, group=4, window=8, rope_base=5e5, rope_style="neox", rope_dim=64,
                                rope_freq_scale=0.5, rope_freq_factors=factors, scale=0.2)
    f = inv_freq_ref(5e5, 64, freq_scale=0.5, factors=factors)
    assert np.allclose(rope_frequencies(D, rope_base=5e5, rope_dim=64, rope_freq_scale=0.5,
                                        rope_freq_factors=factors), f, rtol=1e-14)
    ref = self_extend_ref(q, k, v, group=4, window=8, inv_freq=f, style="neox", scale=0.2)
    assert rel_err(out, ref) <= REL_TOL[np.float32]
    # explicit inv_freq and mscale (YaRN enters this way)
    out = self_extend_attention(q, k, v, group=4, window=8, inv_freq=f, rope_dim=64, mscale=1.3, rope_style="neox")
    ref = self_extend_ref(q, k, v, group=4, window=8, inv_freq=f, style="neox", mscale=1.3)
    assert rel_err(out, ref) <= REL_TOL[np.float32]
    e = rng.standard_normal((H, 8, D)).astype(np.float32)
    out = cope_attention(q, k, v, e, rope_base=10000.0, scale_pos_logits=True)
    ref = cope_ref(q, k, v, e, inv_freq=inv_freq_ref(10000.0, D), scale_pos_logits=True)
    assert rel_err(out, ref) <= REL_TOL[np.float32]


# ---------------------------------------------------------------------------------------------------
# Validation


def _se_call(q, k, v, out=None, **kw):
    args = dict(group=2, window=4, inv_freq=inv_freq_ref(10000.0, q.shape[-1]), rope_dim=q.shape[-1], scale=0.125)
    args.update(kw)
    _native.self_extend_attention(q, k, v, _poisoned(q) if out is None else out, **args)


def test_validation_self_extend(rng):
    q, k, v = _inputs(rng, 8, 16, 4, 2, 64)
    with pytest.raises(ArgumentError, match="group"):
        _se_call(q, k, v, group=0)
    with pytest.raises(ArgumentError, match="window"):
        _se_call(q, k, v, window=0)
    with pytest.raises(ArgumentError, match="heads"):
        _se_call(q[:, :3], k, v)
    with pytest.raises(ArgumentError, match="rope_dim"):
        _se_call(q, k, v, rope_dim=63)
    with pytest.raises(ArgumentError, match="rope_dim"):
        _se_call(q, k, v, rope_dim=66, inv_freq=inv_freq_ref(10000.0, 66))
    with pytest.raises(ArgumentError, match="inv_freq"):
        _se_call(q, k, v, inv_freq=inv_freq_ref(10000.0, 32))
    with pytest.raises(ArrayTypeError, match="inv_freq"):
        _se_call(q, k, v, inv_freq=inv_freq_ref(10000.0, 64).astype(np.float32))
    with pytest.raises(ArgumentError, match="T_q"):
        _se_call(*_inputs(rng, 17, 16, 4, 2, 64))
    with pytest.raises(ArgumentError, match="head_dim"):
        _se_call(*_inputs(rng, 4, 8, 2, 1, 32), rope_dim=32, inv_freq=inv_freq_ref(10000.0, 32))
    with pytest.raises(ArgumentError, match="v must"):
        _se_call(q, k, v[:15])
    with pytest.raises(ArgumentError, match="out"):
        _se_call(q, k, v, out=np.full((8, 4, 32), np.nan, np.float32))
    with pytest.raises(ArgumentError, match="head_dim"):  # head_dim axis not contiguous
        _se_call(np.repeat(q, 2, axis=2)[:, :, ::2], k, v)
    with pytest.raises(ArrayTypeError, match="q"):
        _se_call(q.astype(np.float64), k, v, out=np.full(q.shape, np.nan))
    with pytest.raises(ArrayTypeError, match="k"):
        _se_call(q, k.astype(np.int32), v)
    with pytest.raises(ArrayTypeError, match="v"):
        _se_call(q, k, v.astype(np.float16))
    with pytest.raises(ArrayTypeError, match="out"):
        _se_call(q, k, v, out=np.full(q.shape, np.nan, np.float16))
    with pytest.raises(ArgumentError, match="rope_style"):
        _se_call(q, k, v, rope_style="gptj")
    with pytest.raises(ArgumentError, match="scale"):
        _se_call(q, k, v, scale=float("nan"))
    with pytest.raises(ArgumentError, match="rope_dim"):
        self_extend_attention(q, k, v, group=2, window=4, rope_dim=0)


def test_validation_cope(rng):
    q, k, v = _inputs(rng, 8, 16, 4, 2, 64)
    e = rng.standard_normal((16, 64)).astype(np.float32)
    with pytest.raises(ArgumentError, match="npos_max"):
        cope_native(q, k, v, e[:1])
    with pytest.raises(ArgumentError, match="pos_emb"):
        cope_native(q, k, v, e[:, :32])
    with pytest.raises(ArgumentError, match="pos_emb"):
        cope_native(q, k, v, np.stack([e] * 3))  # per-head table for 3 heads, q has 4
    with pytest.raises(ArrayTypeError, match="pos_emb"):
        cope_native(q, k, v, e.astype(np.float16))
    with pytest.raises(ArgumentError, match="heads"):
        cope_native(q[:, :3], k, v, e)
    with pytest.raises(ArgumentError, match="rope_dim"):
        _native.cope_attention(q, k, v, e, _poisoned(q), scale=0.1, rope_dim=64)
