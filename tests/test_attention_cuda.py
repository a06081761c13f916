"""CUDA attention kernels (SelfExtend, CoPE) against float64 references written from the formulas of
the CPU attention issue. The references run in torch float64 (on the GPU, for speed) on exactly the
rounded inputs the kernel got; outputs are NaN-poisoned before each call; inputs drawn fresh.

Up to 4k keys the whole output is checked; at T_k = 32768 (SE) / 16384 (CoPE) a full float64 reference
does not fit, so sampled query rows are checked: the last row, rows at and around the window boundary,
and 64 random rows, each O(T_k * D)."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import selfext_native  # noqa: E402
from selfext_native import _native  # noqa: E402
from selfext_native.attention import cope_attention  # noqa: E402
from selfext_native.errors import ArgumentError, ArrayTypeError  # noqa: E402
from selfext_native.rope import RopeConfig, rope_inv_freq  # noqa: E402

pytestmark = pytest.mark.cuda

# Relative error bounds ||out - ref|| / ||ref|| (issue 7).
SE_TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
COPE_TOL = {torch.float16: 3e-3, torch.bfloat16: 1.5e-2}
F64 = torch.float64


def _dev():
    return torch.device("cuda")


def _stream():
    return torch.cuda.current_stream().cuda_stream


def _randn(rng, shape, dtype, mult=1.0):
    x = rng.standard_normal(shape).astype(np.float32) * mult
    return torch.from_numpy(x).to(_dev()).to(dtype)


def _rel(out, ref):
    out = out.to(F64)
    assert torch.isfinite(out).all(), "kernel left non-finite values (unwritten or overflowed)"
    return (torch.linalg.norm(out - ref) / torch.linalg.norm(ref)).item()


# --- float64 references ----------------------------------------------------------------------------------


def _rope_cos_sin(inv_freq, mscale, n_pos):
    pos = torch.arange(n_pos, dtype=F64, device=_dev())
    ang = pos[:, None] * torch.as_tensor(inv_freq, dtype=F64, device=_dev())[None, :]
    return mscale * torch.cos(ang), mscale * torch.sin(ang)


def _rotate(x, pos, cos, sin, rope_dim, style):
    """x (N, H, D) float64 rotated at positions pos (N,): pairs (2p, 2p+1) for norm, (p, p+dim/2) for neox."""
    c, s = cos[pos][:, None, :], sin[pos][:, None, :]
    y = x.clone()
    if style == "norm":
        a, b = x[..., 0:rope_dim:2], x[..., 1:rope_dim:2]
        y[..., 0:rope_dim:2] = a * c - b * s
        y[..., 1:rope_dim:2] = a * s + b * c
    else:
        h = rope_dim // 2
        a, b = x[..., :h], x[..., h:rope_dim]
        y[..., :h] = a * c - b * s
        y[..., h:rope_dim] = a * s + b * c
    return y


def se_reference(q, k, v, rows, *, group, window, inv_freq, mscale, rope_dim, style, scale):
    """SelfExtend for query rows `rows` (indices into q): neighbor branch (i, j) for i - j < W, grouped
    branch (i//G + W - W//G, j//G) otherwise, one softmax over j <= i."""
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    T_q, H, D = q.shape
    T_k, H_kv = k.shape[:2]
    rep = H // H_kv
    i = T_k - T_q + rows
    j = torch.arange(T_k, device=_dev())
    gq = i // group + window - window // group
    cos, sin = _rope_cos_sin(inv_freq, mscale, max(T_k, int(gq.max()) + 1))
    qr = q[rows]
    qn, qg = _rotate(qr, i, cos, sin, rope_dim, style), _rotate(qr, gq, cos, sin, rope_dim, style)
    kn, kg = _rotate(k, j, cos, sin, rope_dim, style), _rotate(k, j // group, cos, sin, rope_dim, style)
    kn, kg, ve = (x.repeat_interleave(rep, dim=1) for x in (kn, kg, v))
    diff = i[:, None] - j[None, :]
    s = torch.where(diff < window, torch.einsum("rhd,jhd->hrj", qn, kn), torch.einsum("rhd,jhd->hrj", qg, kg))
    s = (s * scale).masked_fill(diff < 0, -math.inf)
    return torch.einsum("hrj,jhd->rhd", torch.softmax(s, dim=-1), ve)


def cope_reference(q, k, v, pe, rows, *, scale, scale_pos_logits):
    """CoPE (arXiv 2405.18719): gates sigmoid(s), p_ij = sum_{t=j..i} g_it clamped to npos-1, z from the
    integer logits <q_i, e[p]> interpolated at p; softmax(s + z) (z * scale with scale_pos_logits)."""
    q, k, v, pe = q.to(F64), k.to(F64), v.to(F64), pe.to(F64)
    T_q, H, D = q.shape
    T_k, H_kv = k.shape[:2]
    rep = H // H_kv
    npos = pe.shape[-2]
    pe_h = pe.expand(H, npos, D) if pe.dim() == 2 else pe
    i = T_k - T_q + rows
    j = torch.arange(T_k, device=_dev())
    qr = q[rows]
    ke, ve = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = torch.einsum("rhd,jhd->hrj", qr, ke) * scale
    masked = (j[None, :] > i[:, None])[None]
    g = torch.sigmoid(s).masked_fill(masked, 0.0)
    p = g.flip(-1).cumsum(-1).flip(-1).clamp(max=npos - 1)
    ints = torch.einsum("rhd,hpd->hrp", qr, pe_h)
    lo, hi = p.floor(), p.ceil()
    frac = p - lo
    z = frac * ints.gather(-1, hi.long()) + (1 - frac) * ints.gather(-1, lo.long())
    logits = s + z * (scale if scale_pos_logits else 1.0)
    logits = logits.masked_fill(masked, -math.inf)
    return torch.einsum("hrj,jhd->rhd", torch.softmax(logits, dim=-1), ve)


# --- calling the kernels ----------------------------------------------------------------------------------


def run_se(q, k, v, *, group, window, rope_dim=None, style="norm", base=10000.0, scale=None, rope_table=None):
    D = q.shape[-1]
    rope_dim = D if rope_dim is None else rope_dim
    inv, mscale = rope_inv_freq(RopeConfig(freq_base=base, dim=rope_dim, style=style))
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)
    _native.self_extend_attention_cuda(q, k, v, out, inv, mscale, group, window, style, rope_dim, scale, _stream(),
                                       rope_table)
    return out, dict(inv_freq=inv, mscale=mscale, rope_dim=rope_dim, style=style, scale=scale)


def run_cope(q, k, v, pe, *, scale=None, scale_pos_logits=False):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)
    _native.cope_attention_cuda(q, k, v, pe, out, scale, scale_pos_logits, _stream())
    return out, scale


def sampled_rows(T_q, T_k, window, n_random, rng):
    first = T_k - T_q
    wanted = {T_q - 1, 0}
    for i in (window - 1, window, window + 1, window + 63, window + 64, 2 * window):
        if first <= i < T_k:
            wanted.add(i - first)
    wanted.update(int(x) for x in rng.integers(0, T_q, n_random))
    return torch.tensor(sorted(wanted), device=_dev())


# --- SelfExtend ----------------------------------------------------------------------------------------------

SE_CASES = [
    # (T_q, T_k, H, H_kv, D, G, W, style, rope_dim, dtype)
    (300, 300, 4, 4, 64, 4, 64, "norm", None, torch.float16),
    (517, 517, 6, 2, 128, 2, 7, "neox", None, torch.bfloat16),
    (1000, 1000, 8, 1, 80, 8, 1, "norm", None, torch.float16),
    (777, 777, 3, 3, 96, 4, 512, "neox", 64, torch.bfloat16),
    (4096, 4096, 8, 2, 128, 4, 1024, "norm", None, torch.bfloat16),
    (4096, 4096, 4, 4, 64, 2, 512, "neox", 32, torch.float16),
    (640, 640, 4, 1, 128, 1, 64, "norm", None, torch.float16),  # G = 1: plain RoPE attention
    (700, 700, 9, 3, 64, 4, 4096, "norm", None, torch.bfloat16),  # W >= T_k: plain RoPE attention
    (33, 1500, 8, 2, 128, 4, 100, "norm", None, torch.float16),  # a chunk: split key range
    (1, 4000, 32, 8, 128, 4, 1024, "norm", None, torch.bfloat16),  # decode
    (3, 2050, 8, 8, 80, 8, 64, "neox", None, torch.float16),  # decode-like chunk, MHA
]


@pytest.mark.parametrize("prerot", ["0", "1", "mt2"])
@pytest.mark.parametrize("T_q, T_k, H, H_kv, D, G, W, style, rope_dim, dtype", SE_CASES)
def test_self_extend_full(rng, monkeypatch, prerot, T_q, T_k, H, H_kv, D, G, W, style, rope_dim, dtype):
    # prerot = 1: K rotated once per call (SELFEXT_CUDA_SE_PREROT=1) instead of per query block and tile,
    # with the large blocks as 8 warps of one 16-row tile (SELFEXT_CUDA_SE_MT=1); mt2: 4 warps of two
    # (the default at head dims <= 80; 32-key tiles above)
    monkeypatch.setenv("SELFEXT_CUDA_SE_PREROT", "1" if prerot == "mt2" else prerot)
    monkeypatch.setenv("SELFEXT_CUDA_SE_MT", "2" if prerot == "mt2" else "1")
    q = _randn(rng, (T_q, H, D), dtype, 1.5)
    k = _randn(rng, (T_k, H_kv, D), dtype, 1.5)
    v = _randn(rng, (T_k, H_kv, D), dtype)
    out, a = run_se(q, k, v, group=G, window=W, rope_dim=rope_dim, style=style)
    torch.cuda.synchronize()
    rows = torch.arange(T_q, device=_dev())
    ref = se_reference(q, k, v, rows, group=G, window=W, **a)
    assert _rel(out, ref) <= SE_TOL[dtype]


DECODE_CASES = [
    # (T_k, H, H_kv, D, G, W, style, rope_dim, dtype): one query row; both decode kernels
    (1000, 8, 2, 64, 4, 64, "norm", None, torch.float16),
    (2500, 10, 5, 80, 3, 200, "neox", None, torch.bfloat16),
    (1777, 6, 6, 96, 4, 512, "neox", 64, torch.float16),  # MHA, partial rotary
    (3000, 16, 2, 128, 8, 1024, "norm", None, torch.bfloat16),  # n_rep = 8
    (130, 9, 3, 64, 1, 64, "norm", None, torch.float16),  # G = 1: plain RoPE
    (65, 4, 1, 128, 2, 16, "norm", 96, torch.bfloat16),  # one chunk and one key of the next
    # the tensor-core kernel's layouts (RoPE over the whole head; neox at head dims 64, 96, 128)
    (1, 4, 2, 64, 4, 64, "norm", None, torch.float16),  # a single key
    (4097, 12, 4, 128, 5, 700, "neox", None, torch.bfloat16),  # qwen2's layout
    (2049, 8, 8, 96, 3, 300, "norm", None, torch.float16),  # MHA: n_rep = 1
    (555, 14, 2, 64, 6, 100, "neox", None, torch.bfloat16),  # n_rep = 7
    (700, 8, 4, 80, 4, 128, "norm", None, torch.bfloat16),
    (1500, 6, 2, 96, 2, 1000, "neox", None, torch.float16),
]


@pytest.mark.parametrize("kernel, mma, cps, threads, cluster",
                         [("1", "1", None, None, None), ("1", "1", "3", None, None), ("1", "1", "100000", None, None),
                          ("1", "1", None, None, "0"), ("1", "1", "3", None, "0"),
                          ("1", "0", None, None, None), ("1", "0", "3", None, None), ("1", "0", "100000", None, None),
                          ("1", "0", None, "128", None), ("1", "0", "3", "128", None),
                          ("1", "0", "100000", "128", None), ("0", None, None, None, None)],
                         ids=["mma", "mma-3-chunks-per-split", "mma-one-split", "mma-merge-kernel",
                              "mma-3-chunks-per-split-merge-kernel", "decode", "decode-3-chunks-per-split",
                              "decode-one-split", "decode128", "decode128-3-chunks-per-split", "decode128-one-split",
                              "tile"])
@pytest.mark.parametrize("T_k, H, H_kv, D, G, W, style, rope_dim, dtype", DECODE_CASES)
def test_self_extend_decode_kernels(rng, monkeypatch, kernel, mma, cps, threads, cluster, T_k, H, H_kv, D, G, W,
                                    style, rope_dim, dtype):
    """T_q = 1 through the tensor-core decode kernel (the default where RoPE covers the head; other layouts
    fall back to the CUDA-core one), the CUDA-core decode kernel (SELFEXT_CUDA_SE_DEC_MMA=0) and the tile
    kernel (SELFEXT_CUDA_SE_DECODE=0); the decode kernels also with at least 3 chunks of 64 keys per split
    and with one split (their own output, no merge), and the CUDA-core one with 128-thread blocks of
    32-key chunks (SELFEXT_CUDA_SE_DEC_THREADS=128: two element pairs per thread in P V at D >= 80). The
    tensor-core kernel merges up to 8 splits within a thread-block cluster on compute capability >= 9.0
    (more take the merge kernel: T_k = 4097 here); SELFEXT_CUDA_SE_DEC_CLUSTER=0 takes the merge kernel."""
    monkeypatch.setenv("SELFEXT_CUDA_SE_DECODE", kernel)
    if cluster is not None:
        monkeypatch.setenv("SELFEXT_CUDA_SE_DEC_CLUSTER", cluster)
    if mma is not None:
        monkeypatch.setenv("SELFEXT_CUDA_SE_DEC_MMA", mma)
    if cps is not None:
        monkeypatch.setenv("SELFEXT_CUDA_SE_DEC_CPS", cps)
    if threads is not None:
        monkeypatch.setenv("SELFEXT_CUDA_SE_DEC_THREADS", threads)
    q = _randn(rng, (1, H, D), dtype, 1.5)
    k = _randn(rng, (T_k, H_kv, D), dtype, 1.5)
    v = _randn(rng, (T_k, H_kv, D), dtype)
    out, a = run_se(q, k, v, group=G, window=W, rope_dim=rope_dim, style=style)
    torch.cuda.synchronize()
    ref = se_reference(q, k, v, torch.arange(1, device=_dev()), group=G, window=W, **a)
    assert _rel(out, ref) <= SE_TOL[dtype]


def test_self_extend_plain_equivalences(rng):
    """G = 1 and W >= T_k both equal plain causal RoPE attention (the neighbor branch everywhere)."""
    T, H, D = 600, 4, 64
    q, k, v = (_randn(rng, (T, H, D), torch.float16) for _ in range(3))
    o1, _ = run_se(q, k, v, group=1, window=5)
    o2, _ = run_se(q, k, v, group=4, window=T)
    o3, a = run_se(q, k, v, group=7, window=10**9)
    ref = se_reference(q, k, v, torch.arange(T, device=_dev()), group=1, window=T, **a)
    for o in (o1, o2, o3):
        assert _rel(o, ref) <= SE_TOL[torch.float16]


def test_self_extend_strided_views(rng):
    """q, k, v as views into a fused (T, heads, D) projection buffer, and out with a padded head stride."""
    T, H, H_kv, D = 513, 8, 2, 128
    qkv = _randn(rng, (T, H + 2 * H_kv, D), torch.bfloat16, 1.5)
    q, k, v = qkv[:, :H], qkv[:, H:H + H_kv], qkv[:, H + H_kv:]
    inv, mscale = rope_inv_freq(RopeConfig(freq_base=10000.0, dim=D))
    big = torch.full((T, H + 3, D), float("nan"), dtype=torch.bfloat16, device=_dev())
    out = big[:, 1:H + 1]
    _native.self_extend_attention_cuda(q, k, v, out, inv, mscale, 4, 128, "norm", D, D ** -0.5, _stream())
    ref = se_reference(q, k, v, torch.arange(T, device=_dev()), group=4, window=128, inv_freq=inv, mscale=mscale,
                       rope_dim=D, style="norm", scale=D ** -0.5)
    assert _rel(out, ref) <= SE_TOL[torch.bfloat16]
    assert torch.isnan(big[:, 0]).all() and torch.isnan(big[:, H + 1:]).all(), "wrote outside out"


# The large-block kernels: the default (on compute capability 9.0 at head dims 64 and 128 the wgmma kernel,
# elsewhere the phased mma.sync kernel), the wgmma kernel's eight configurations (SELFEXT_CUDA_SE_WGMMA_CFG:
# Q source, tile width, pipelined or not; other GPUs and head dims run the phased kernel for them), the phased kernel
# itself (SELFEXT_CUDA_SE_WGMMA=0) and se_attention_kernel with one or two 16-row tiles per warp
# (SELFEXT_CUDA_SE_PHASED=0; SELFEXT_CUDA_SE_MT, two only at head dims <= 80).
WGMMA_CFGS = {"default": {}, **{f"wgmma_{c}": {"SELFEXT_CUDA_SE_WGMMA_CFG": c}
                                for c in ("s64", "q64", "s128", "q128", "s64p", "q64p", "s128p", "q128p", "s64p2")},
              "phased": {"SELFEXT_CUDA_SE_WGMMA": "0"}}
LARGE_KERNELS = {**WGMMA_CFGS, "mt1": {"SELFEXT_CUDA_SE_PHASED": "0", "SELFEXT_CUDA_SE_MT": "1"},
                 "mt2": {"SELFEXT_CUDA_SE_PHASED": "0", "SELFEXT_CUDA_SE_MT": "2"}}


@pytest.mark.parametrize("kernel", list(LARGE_KERNELS))
@pytest.mark.parametrize("D, style, rope_dim, dtype", [(64, "norm", None, torch.float16),
                                                       (80, "neox", None, torch.bfloat16),
                                                       (96, "norm", 64, torch.float16),
                                                       (128, "norm", None, torch.bfloat16)])
def test_self_extend_large_blocks(rng, monkeypatch, kernel, D, style, rope_dim, dtype):
    """Enough 128-row query blocks to fill the GPU (the large-block kernels without a split, K rotated once
    per call) at every head dim; the window boundary (W = 300) crosses tiles of every layout."""
    for name, value in LARGE_KERNELS[kernel].items():
        monkeypatch.setenv(name, value)
    T, H, H_kv, G, W = 2048, 16, 2, 3, 300  # 2 kv heads x 128 blocks of 128 rows
    q = _randn(rng, (T, H, D), dtype, 1.5)
    k = _randn(rng, (T, H_kv, D), dtype, 1.5)
    v = _randn(rng, (T, H_kv, D), dtype)
    out, a = run_se(q, k, v, group=G, window=W, rope_dim=rope_dim, style=style)
    torch.cuda.synchronize()
    ref = se_reference(q, k, v, torch.arange(T, device=_dev()), group=G, window=W, **a)
    assert _rel(out, ref) <= SE_TOL[dtype]


@pytest.mark.parametrize("kernel", list(WGMMA_CFGS))
@pytest.mark.parametrize("H, H_kv, D, style, G, W, dtype", [
    (9, 3, 64, "norm", 31, 40, torch.bfloat16),     # odd GQA group; W inside one 64-key tile; a large G
    (32, 8, 128, "neox", 4, 1024, torch.float16),   # qwen2's layout; the bench's window
    (16, 2, 128, "norm", 4, 5000, torch.bfloat16),  # W >= T: the neighbor phase only
    (8, 8, 64, "norm", 2, 1, torch.float16),        # MHA, W = 1: every pair but the diagonal grouped
])
def test_self_extend_phased_kernel_cases(rng, monkeypatch, kernel, H, H_kv, D, style, G, W, dtype):
    """The phased kernels (two phases over the key tiles, boundary tiles visited in both) on the edges of
    their tile bookkeeping: windows narrower than a tile, none at all, and wider than the sequence; T not a
    multiple of any tile (the last K and V^T tiles part zero), and enough 128-row blocks per kv head to take
    the large-block path (blocks x kv heads >= 132, an H100's or H200's SM count)."""
    for name, value in WGMMA_CFGS[kernel].items():
        monkeypatch.setenv(name, value)
    T = 2900 if H // H_kv > 1 else 2600
    q = _randn(rng, (T, H, D), dtype, 1.5)
    k = _randn(rng, (T, H_kv, D), dtype, 1.5)
    v = _randn(rng, (T, H_kv, D), dtype)
    out, a = run_se(q, k, v, group=G, window=W, style=style)
    torch.cuda.synchronize()
    rows = sampled_rows(T, T, W, 64, rng)
    ref = se_reference(q, k, v, rows, group=G, window=W, **a)
    assert _rel(out[rows], ref) <= SE_TOL[dtype]


@pytest.mark.parametrize("kernel", list(WGMMA_CFGS))
@pytest.mark.parametrize("D, dtype", [(128, torch.float16), (64, torch.bfloat16)])
def test_self_extend_large_blocks_short_sequence(rng, monkeypatch, kernel, D, dtype):
    """Many kv heads over a short sequence: 150 keys (one full and one part-zero 128-key tile, or three 64-key
    tiles), yet 3 blocks x 64 kv heads take the large-block path; the whole output is checked."""
    for name, value in WGMMA_CFGS[kernel].items():
        monkeypatch.setenv(name, value)
    T, H, H_kv, G, W = 150, 128, 64, 3, 40
    q = _randn(rng, (T, H, D), dtype, 1.5)
    k = _randn(rng, (T, H_kv, D), dtype, 1.5)
    v = _randn(rng, (T, H_kv, D), dtype)
    out, a = run_se(q, k, v, group=G, window=W)
    torch.cuda.synchronize()
    ref = se_reference(q, k, v, torch.arange(T, device=_dev()), group=G, window=W, **a)
    assert _rel(out, ref) <= SE_TOL[dtype]


@pytest.mark.parametrize("kernel", list(WGMMA_CFGS))
@pytest.mark.parametrize("H, H_kv, D, dtype", [(32, 8, 128, torch.bfloat16), (9, 3, 64, torch.float16)])
def test_self_extend_large_chunk_after_a_prefix(rng, monkeypatch, kernel, H, H_kv, D, dtype):
    """A chunk of a long prompt (T_q = 2000 queries at positions 1000..2999 against 3000 keys) with enough rows
    for the large-block kernels (blocks x kv heads >= 132): the queries' positions start mid-sequence, so every block's tile list (the
    grouped tiles, then the neighbor tiles from its first row's window) starts and ends off the tile grid."""
    for name, value in WGMMA_CFGS[kernel].items():
        monkeypatch.setenv(name, value)
    T_q, T_k, G, W = 2000, 3000, 4, 700
    q = _randn(rng, (T_q, H, D), dtype, 1.5)
    k = _randn(rng, (T_k, H_kv, D), dtype, 1.5)
    v = _randn(rng, (T_k, H_kv, D), dtype)
    out, a = run_se(q, k, v, group=G, window=W)
    torch.cuda.synchronize()
    rows = sampled_rows(T_q, T_k, W, 64, rng)
    ref = se_reference(q, k, v, rows, group=G, window=W, **a)
    assert _rel(out[rows], ref) <= SE_TOL[dtype]


@pytest.mark.parametrize("prerot", ["0", "1"])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_self_extend_chunked_prefill(rng, monkeypatch, prerot, chunk):
    """A prefill split into chunks (each chunk's queries against all keys so far) equals one prefill."""
    monkeypatch.setenv("SELFEXT_CUDA_SE_PREROT", prerot)
    T, H, H_kv, D, G, W = 333, 8, 2, 64, 4, 50
    dtype = torch.bfloat16
    q = _randn(rng, (T, H, D), dtype, 1.5)
    k = _randn(rng, (T, H_kv, D), dtype, 1.5)
    v = _randn(rng, (T, H_kv, D), dtype)
    whole, a = run_se(q, k, v, group=G, window=W)
    parts = []
    for s in range(0, T, chunk):
        e = min(T, s + chunk)
        o, _ = run_se(q[s:e], k[:e], v[:e], group=G, window=W)
        parts.append(o)
    chunked = torch.cat(parts)
    ref = se_reference(q, k, v, torch.arange(T, device=_dev()), group=G, window=W, **a)
    assert _rel(chunked, ref) <= SE_TOL[dtype]
    assert _rel(chunked, whole.to(F64)) <= SE_TOL[dtype]


@pytest.mark.parametrize("T_q, dtype", [(32768, torch.bfloat16), (1, torch.float16), (100, torch.float16)])
def test_self_extend_long_sampled(rng, T_q, dtype):
    T_k, H, H_kv, D, G, W = 32768, 8, 2, 128, 4, 1024
    q = _randn(rng, (T_q, H, D), dtype, 1.5)
    k = _randn(rng, (T_k, H_kv, D), dtype, 1.5)
    v = _randn(rng, (T_k, H_kv, D), dtype)
    out, a = run_se(q, k, v, group=G, window=W)
    rows = sampled_rows(T_q, T_k, W, 64, rng)
    ref = se_reference(q, k, v, rows, group=G, window=W, **a)
    assert _rel(out[rows], ref) <= SE_TOL[dtype]


def test_self_extend_given_rope_table(rng):
    """A caller-built device table (as the model keeps one) gives the same result; the device table
    matches float64 cos/sin."""
    T, H, D = 1200, 4, 128
    q, k, v = (_randn(rng, (T, H, D), torch.float16) for _ in range(3))
    inv, mscale = rope_inv_freq(RopeConfig(freq_base=500000.0, dim=D, scaling_type="linear", scaling_factor=2.0))
    table = torch.full((T + 5, D // 2, 2), float("nan"), dtype=torch.float32, device=_dev())
    _native.rope_table_cuda(inv, mscale, table, _stream())
    cos, sin = _rope_cos_sin(inv, mscale, T + 5)
    assert (table[..., 0].to(F64) - cos).abs().max().item() < 1e-6
    assert (table[..., 1].to(F64) - sin).abs().max().item() < 1e-6
    out = torch.full_like(q, float("nan"))
    _native.self_extend_attention_cuda(q, k, v, out, None, 1.0, 2, 100, "norm", D, D ** -0.5, _stream(), table)
    ref = se_reference(q, k, v, torch.arange(T, device=_dev()), group=2, window=100, inv_freq=inv, mscale=mscale,
                       rope_dim=D, style="norm", scale=D ** -0.5)
    assert _rel(out, ref) <= SE_TOL[torch.float16]


# --- CoPE -------------------------------------------------------------------------------------------------------

COPE_CASES = [
    # (T_q, T_k, H, H_kv, D, npos, per_head_pe, scale_pos_logits, q_mult, dtype)
    (300, 300, 4, 4, 64, 16, False, False, 1.0, torch.float16),
    (517, 517, 6, 2, 128, 64, True, True, 1.0, torch.bfloat16),
    (1000, 1000, 8, 1, 80, 2, False, False, 1.0, torch.float16),
    (777, 777, 3, 3, 96, 1024, True, False, 1.0, torch.bfloat16),  # npos in a global workspace
    (4096, 4096, 8, 2, 128, 64, False, False, 1.0, torch.bfloat16),
    (2000, 2000, 4, 4, 64, 64, False, True, 6.0, torch.float16),  # gates saturate near 0 and 1
    (1500, 1500, 4, 2, 64, 300, True, False, 0.0, torch.float16),  # q = 0: every gate 0.5, p on halves
    (33, 1500, 8, 2, 128, 64, False, False, 1.0, torch.float16),  # chunk: split, two passes
    (1, 4000, 16, 16, 64, 64, False, True, 1.0, torch.bfloat16),  # decode
    (2, 3000, 8, 2, 128, 1024, True, False, 1.0, torch.float16),  # decode, large npos, per-head
]


@pytest.mark.parametrize("T_q, T_k, H, H_kv, D, npos, per_head, spl, q_mult, dtype", COPE_CASES)
def test_cope_full(rng, T_q, T_k, H, H_kv, D, npos, per_head, spl, q_mult, dtype):
    q = _randn(rng, (T_q, H, D), dtype, q_mult) if q_mult else torch.zeros((T_q, H, D), dtype=dtype, device=_dev())
    k = _randn(rng, (T_k, H_kv, D), dtype)
    v = _randn(rng, (T_k, H_kv, D), dtype)
    pe = _randn(rng, (H, npos, D) if per_head else (npos, D), dtype)
    out, scale = run_cope(q, k, v, pe, scale_pos_logits=spl)
    ref = cope_reference(q, k, v, pe, torch.arange(T_q, device=_dev()), scale=scale, scale_pos_logits=spl)
    assert _rel(out, ref) <= COPE_TOL[dtype]


@pytest.mark.parametrize("op", ["cope", "self_extend"])
def test_same_stream_skips_only_the_handshake(rng, op):
    """same_stream=True (what the public ops pass for torch tensors on the current stream) asks DLPack for
    no synchronization; the result is the same bits as with the handshake, and the public op agrees."""
    T, H, H_kv, D = 200, 4, 2, 64
    dtype = torch.float16
    q, k, v = _randn(rng, (T, H, D), dtype), _randn(rng, (T, H_kv, D), dtype), _randn(rng, (T, H_kv, D), dtype)
    outs = []
    for same in (False, True):
        out = torch.full_like(q, float("nan"))
        if op == "cope":
            pe = _randn(np.random.default_rng(1), (16, D), dtype)
            _native.cope_attention_cuda(q, k, v, pe, out, D ** -0.5, False, _stream(), same_stream=same)
        else:
            inv, mscale = rope_inv_freq(RopeConfig(freq_base=10000.0, dim=D))
            _native.self_extend_attention_cuda(q, k, v, out, inv, mscale, 4, 64, "norm", D, D ** -0.5, _stream(),
                                               same_stream=same)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    if op == "cope":
        public = cope_attention(q, k, v, pe)
        ref = cope_reference(q, k, v, pe, torch.arange(T, device=_dev()), scale=D ** -0.5, scale_pos_logits=False)
        assert _rel(public, ref) <= COPE_TOL[dtype]
        assert _rel(outs[1], ref) <= COPE_TOL[dtype]


def test_cope_positions_on_integers_and_clamp(rng):
    """Gates exactly 1 (huge logits): p_ij = i - j + 1 lands on integers and then on the clamp."""
    T, H, D, npos = 400, 2, 64, 16
    dtype = torch.float16
    d = torch.zeros(D, device=_dev())
    d[0] = 1.0
    q = (d * 30).expand(T, H, D).to(dtype).contiguous()
    k = (d * 30).expand(T, H, D).to(dtype).contiguous()  # s = 900/8 >> 0: sigmoid = 1 in fp32
    v = _randn(rng, (T, H, D), dtype)
    pe = _randn(rng, (npos, D), dtype)
    out, scale = run_cope(q, k, v, pe, scale=1.0 / 8)
    ref = cope_reference(q, k, v, pe, torch.arange(T, device=_dev()), scale=scale, scale_pos_logits=False)
    assert _rel(out, ref) <= COPE_TOL[dtype]


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_cope_chunked_prefill(rng, chunk):
    T, H, H_kv, D, npos = 333, 4, 2, 64, 16
    dtype = torch.float16
    q = _randn(rng, (T, H, D), dtype)
    k = _randn(rng, (T, H_kv, D), dtype)
    v = _randn(rng, (T, H_kv, D), dtype)
    pe = _randn(rng, (npos, D), dtype)
    whole, scale = run_cope(q, k, v, pe)
    parts = [run_cope(q[s:min(T, s + chunk)], k[:min(T, s + chunk)], v[:min(T, s + chunk)], pe)[0]
             for s in range(0, T, chunk)]
    chunked = torch.cat(parts)
    ref = cope_reference(q, k, v, pe, torch.arange(T, device=_dev()), scale=scale, scale_pos_logits=False)
    assert _rel(chunked, ref) <= COPE_TOL[dtype]
    assert _rel(chunked, whole.to(F64)) <= COPE_TOL[dtype]


@pytest.mark.parametrize("T_q, dtype", [(16384, torch.bfloat16), (1, torch.float16)])
def test_cope_long_sampled(rng, T_q, dtype):
    T_k, H, H_kv, D, npos = 16384, 8, 8, 128, 64
    q = _randn(rng, (T_q, H, D), dtype)
    k = _randn(rng, (T_k, H_kv, D), dtype)
    v = _randn(rng, (T_k, H_kv, D), dtype)
    pe = _randn(rng, (npos, D), dtype)
    out, scale = run_cope(q, k, v, pe)
    rows = sampled_rows(T_q, T_k, 64, 64, rng)
    ref = cope_reference(q, k, v, pe, rows, scale=scale, scale_pos_logits=False)
    assert _rel(out[rows], ref) <= COPE_TOL[dtype]


# --- the CPU op agrees, and the Python op routes CUDA arrays ---------------------------------------------------


def _py_op(name):
    for mod in ("attention", "ops"):
        try:
            m = __import__(f"selfext_native.{mod}", fromlist=[name])
        except ImportError:
            continue
        if hasattr(m, name):
            return getattr(m, name)
    return None


def test_self_extend_gpu_matches_cpu_op(rng):
    op = _py_op("self_extend_attention")
    if op is None:
        pytest.skip("the CPU self_extend_attention op does not exist yet")
    T, H, H_kv, D, G, W = 700, 4, 2, 64, 4, 100
    q = _randn(rng, (T, H, D), torch.float16)
    k = _randn(rng, (T, H_kv, D), torch.float16)
    v = _randn(rng, (T, H_kv, D), torch.float16)
    gpu, _ = run_se(q, k, v, group=G, window=W)
    cpu = op(q.cpu().float(), k.cpu().float(), v.cpu().float(), group=G, window=W, rope_base=10000.0)
    cpu = torch.as_tensor(np.asarray(cpu)).to(_dev(), F64)
    assert _rel(gpu, cpu) <= SE_TOL[torch.float16]
    try:
        routed = op(q, k, v, group=G, window=W, rope_base=10000.0)
    except (ArrayTypeError, NotImplementedError, TypeError) as e:
        pytest.skip(f"the Python op does not route CUDA arrays yet: {e}")
    assert routed.is_cuda and _rel(routed, gpu.to(F64)) <= SE_TOL[torch.float16]


def test_cope_gpu_matches_cpu_op(rng):
    op = _py_op("cope_attention")
    if op is None:
        pytest.skip("the CPU cope_attention op does not exist yet")
    T, H, D, npos = 500, 4, 64, 16
    q, k, v = (_randn(rng, (T, H, D), torch.float16) for _ in range(3))
    pe = _randn(rng, (npos, D), torch.float16)
    gpu, _ = run_cope(q, k, v, pe)
    cpu = op(q.cpu().float(), k.cpu().float(), v.cpu().float(), pe.cpu().float())
    cpu = torch.as_tensor(np.asarray(cpu)).to(_dev(), F64)
    assert _rel(gpu, cpu) <= COPE_TOL[torch.float16]
    try:
        routed = op(q, k, v, pe)
    except (ArrayTypeError, NotImplementedError, TypeError) as e:
        pytest.skip(f"the Python op does not route CUDA arrays yet: {e}")
    assert routed.is_cuda and _rel(routed, gpu.to(F64)) <= COPE_TOL[torch.float16]


# --- argument checks -----------------------------------------------------------------------------------------


def test_errors_name_the_argument(rng):
    T, H, D = 64, 4, 64
    q, k, v = (_randn(rng, (T, H, D), torch.float16) for _ in range(3))
    out = torch.empty_like(q)
    inv, _ = rope_inv_freq(RopeConfig(dim=D))
    s = _stream()

    def se(**kw):
        args = dict(q=q, k=k, v=v, out=out, inv_freq=inv, mscale=1.0, group=2, window=8, rope_style="norm",
                    rope_dim=D, scale=0.125, stream=s)
        args.update(kw)
        _native.self_extend_attention_cuda(**args)

    with pytest.raises(ArgumentError, match="group"):
        se(group=0)
    with pytest.raises(ArgumentError, match="window"):
        se(window=0)
    with pytest.raises(ArrayTypeError, match="k"):
        se(k=k.cpu())
    with pytest.raises(ArrayTypeError, match="dtype"):
        se(q=q.float())
    with pytest.raises(ArrayTypeError, match="v"):
        se(v=v.to(torch.bfloat16))
    with pytest.raises(ArgumentError, match="multiple"):
        se(k=_randn(rng, (T, 3, D), torch.float16), v=_randn(rng, (T, 3, D), torch.float16))
    with pytest.raises(ArgumentError, match="head_dim"):
        q32 = _randn(rng, (T, H, 32), torch.float16)
        se(q=q32, k=q32, v=q32, out=torch.empty_like(q32), inv_freq=inv[:16], rope_dim=32)
    with pytest.raises(ArgumentError, match="out"):
        se(out=torch.empty((T, H + 1, D), dtype=torch.float16, device=_dev()))
    with pytest.raises(ArgumentError, match="rope_style"):
        se(rope_style="gptj")
    with pytest.raises(ArgumentError, match="contiguous"):
        se(q=_randn(rng, (T, H, 2 * D), torch.float16)[..., ::2])
    pe = _randn(rng, (1, D), torch.float16)
    with pytest.raises(ArgumentError, match="npos_max"):
        _native.cope_attention_cuda(q, k, v, pe, out, 0.125, False, s)
    with pytest.raises(ArrayTypeError, match="pos_emb"):
        _native.cope_attention_cuda(q, k, v, pe.cpu(), out, 0.125, False, s)
