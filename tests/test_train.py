"""selfext_native.train: task generators and their splits, a few training steps, the GGUF exporter,
and the committed CoPE / RoPE models (docs/cope_gguf.md, docs/cope_results.md). CPU, < 60 s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selfext_native.train.tasks import BOS, TASKS, get_task, task_string

DATA = Path(__file__).parent / "data"


# --- data generators ------------------------------------------------------------------------------

def _flipflop_check(task, ids, target):
    """Every scored token is a read's bit and equals the last written bit."""
    s = task.decode(ids)[len(BOS):]
    memory = None
    for k in range(0, len(s), 2):
        op, bit = s[k], s[k + 1]
        scored = bool(target[1 + k + 1])
        assert scored == (op == "r")
        if op == "w":
            memory = bit
        elif op == "r":
            assert bit == memory


def test_flipflop_splits():
    task = get_task("flipflop")
    rng = np.random.default_rng(1)
    ignores = {}
    for split in ("train", "test", "sparse"):
        b = task.sample(rng, 200, split)
        assert b.ids.shape == (200, 65) and (b.ids[:, 0] == task.token_id(BOS)).all()
        ops = b.ids[:, 1::2]
        assert (ops[:, 0] == task.token_id("w")).all() and (ops[:, -1] == task.token_id("r")).all()
        ignores[split] = (ops[:, 1:-1] == task.token_id("i")).mean()
        for i in range(20):
            _flipflop_check(task, b.ids[i], b.target[i])
    assert abs(ignores["train"] - 0.8) < 0.02 and abs(ignores["test"] - 0.8) < 0.02
    assert abs(ignores["sparse"] - 0.98) < 0.01
    assert task.ood_splits == ("sparse", "long")
    assert task.sample(rng, 2, "long").ids.shape == (2, 129)


def test_counting_and_copy_splits():
    rng = np.random.default_rng(2)
    counting = get_task("counting")
    for split, n_slots in (("train", 64), ("long", 128)):
        b = counting.sample(rng, 50, split)
        for ids, tgt in zip(b.ids, b.target):
            s = counting.decode(ids)[len(BOS):]
            stream, tail = s[:n_slots], s[n_slots:]
            assert len(tail) == 9 and set(stream) <= set(".abc")
            for q in range(3):
                var, answer = tail[3 * q + 1].lower(), tail[3 * q + 2]
                assert stream.count(var) == int(answer)
            assert tgt.sum() == 3
    copy = get_task("copy")
    for split, n_slots in (("train", 48), ("long", 96)):
        b = copy.sample(rng, 50, split)
        for ids, tgt in zip(b.ids, b.target):
            s = copy.decode(ids)[len(BOS):]
            stream, sep, out = s[:n_slots], s[n_slots], s[n_slots + 1:]
            assert sep == "|" and stream.replace(".", "") == out and len(out) == 8
            assert tgt.sum() == 8 and tgt[-8:].all()


def test_unknown_split_and_task():
    with pytest.raises(ValueError, match="split 'nope'"):
        get_task("flipflop").sample(np.random.default_rng(0), 1, "nope")
    with pytest.raises(ValueError, match="task 'nope'"):
        get_task("nope")


# --- torch: training and export ----------------------------------------------------------------------

torch = pytest.importorskip("torch")

from selfext_native.train.export import (  # noqa: E402
    export_gguf, load_gguf, permute_qk, read_gguf, unpermute_qk)
from selfext_native.train.model import Decoder, ModelConfig  # noqa: E402
from selfext_native.train.trainer import batch_tensors, masked_loss  # noqa: E402


def _model(task, pos, **kw):
    torch.manual_seed(0)
    return Decoder(ModelConfig(n_vocab=task.n_vocab, pos=pos, n_layer=1, context_length=64, **kw))


@pytest.mark.parametrize("pos", ["cope", "rope"])
def test_few_steps_lower_the_loss(pos):
    torch.set_num_threads(1)
    task = get_task("flipflop")
    model = _model(task, pos)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    fixed = batch_tensors(task, np.random.default_rng(99), 16, "train")
    with torch.no_grad():
        before = float(masked_loss(model, *fixed))
    for _ in range(15):
        loss = masked_loss(model, *batch_tensors(task, rng, 16, "train"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(masked_loss(model, *fixed))
    assert after < before - 0.05, (before, after)


def test_cope_attention_matches_the_formula():
    """The model's CoPE attention against a float64 loop over the paper's definitions (one head)."""
    from selfext_native.train.model import cope_logits
    g = torch.Generator().manual_seed(3)
    T, D, npos = 9, 64, 4
    q = torch.randn(1, 1, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, T, D, generator=g, dtype=torch.float64)
    e = torch.randn(npos, D, generator=g, dtype=torch.float64)
    s = (q @ k.transpose(-1, -2)) / D ** 0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    z = cope_logits(q, s, e, npos)[0, 0]
    qn, kn, en = q[0, 0].numpy(), k[0, 0].numpy(), e.numpy()
    for i in range(T):
        for j in range(i + 1):
            p = min(sum(1 / (1 + np.exp(-qn[i] @ kn[t] / D ** 0.5)) for t in range(j, i + 1)), npos - 1)
            lo, hi = int(np.floor(p)), int(np.ceil(p))
            want = (p - lo) * (qn[i] @ en[hi]) + (1 - p + lo) * (qn[i] @ en[lo])
            assert abs(float(z[i, j]) - want) < 1e-9


@pytest.mark.parametrize("per_head,scaled,rope_dim", [(False, False, 0), (True, True, 32)])
def test_torch_cope_attention_matches_the_fused_kernel(per_head, scaled, rope_dim):
    """The trainer's attention layer (paper formulation) and our fused kernel agree: the models
    trained here mean the same thing the runtime computes (GQA, per-head tables, both z scalings,
    neox RoPE before the gates)."""
    from selfext_native.ops import cope_attention
    from selfext_native.train.model import Attention
    cfg = ModelConfig(n_vocab=8, n_embd=256, n_head=4, n_head_kv=2, pos="cope", npos_max=8,
                      cope_per_head=per_head, scale_pos_logits=scaled, rope_dim=rope_dim)
    torch.manual_seed(1)
    attn = Attention(cfg)
    with torch.no_grad():
        attn.cope_pos.normal_()
        attn.wo.weight.copy_(torch.eye(256))   # the output is the heads' concatenated attention
        x = torch.randn(1, 37, 256)
        want = attn(x)[0]
        q = attn.wq(x)[0].view(37, 4, 64)
        k = attn.wk(x)[0].view(37, 2, 64)
        v = attn.wv(x)[0].view(37, 2, 64)
    kw = dict(rope_base=cfg.rope_base, rope_style="neox", rope_dim=rope_dim) if rope_dim else {}
    got = cope_attention(q.numpy(), k.numpy(), v.numpy(), attn.cope_pos.detach().numpy(),
                         scale_pos_logits=scaled, **kw)
    assert np.abs(got.reshape(37, 256) - want.numpy()).max() < 1e-4


def test_qk_permutation_round_trips():
    w = np.arange(4 * 64 * 3, dtype=np.float32).reshape(4 * 64, 3)
    p = permute_qk(w, 4)
    assert np.array_equal(unpermute_qk(p, 4), w)
    # head 1: HF rows (i, i + 32) become GGUF rows (2i, 2i + 1)
    assert np.array_equal(p[64 + 2 * 5], w[64 + 5]) and np.array_equal(p[64 + 2 * 5 + 1], w[64 + 32 + 5])


def test_rope_twin_permutation_matches_adjacent_pair_rope():
    """Adjacent-pair RoPE on the permuted projection equals half-split RoPE on the original, up to the
    same row permutation, so q.k is unchanged: the llama twin computes the torch model's logits."""
    from selfext_native.train.model import rope_neox
    g = torch.Generator().manual_seed(4)
    T, D = 7, 64
    q, k = torch.randn(T, D, generator=g, dtype=torch.float64), torch.randn(T, D, generator=g, dtype=torch.float64)
    ref = rope_neox(q[None, None], 10000.0, D)[0, 0] @ rope_neox(k[None, None], 10000.0, D)[0, 0].T

    def rope_norm(x):  # llama.cpp "norm": pairs (2i, 2i + 1)
        inv = 10000.0 ** (-torch.arange(D // 2, dtype=torch.float64) * 2 / D)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv
        a, b = x[:, 0::2], x[:, 1::2]
        out = torch.empty_like(x)
        out[:, 0::2], out[:, 1::2] = a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()
        return out
    qp = torch.from_numpy(permute_qk(q.T.numpy(), 1)).T  # permuting rows of W permutes features of q
    kp = torch.from_numpy(permute_qk(k.T.numpy(), 1)).T
    assert torch.allclose(rope_norm(qp) @ rope_norm(kp).T, ref, atol=1e-10)


@pytest.mark.parametrize("pos,kw", [("cope", {}), ("cope", {"cope_per_head": True, "rope_dim": 32,
                                                            "scale_pos_logits": True, "tied": False}),
                                    ("rope", {"n_head_kv": 1})])
def test_export_f32_round_trip(tmp_path, pos, kw):
    task = get_task("flipflop")
    model = _model(task, pos, **kw)
    with torch.no_grad():  # the CoPE table starts at zero; make it non-trivial
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = export_gguf(model, task, tmp_path / "m.gguf", "f32")
    keys, tensors = read_gguf(path)
    cfg = model.cfg
    arch = "selfext-cope" if pos == "cope" else "llama"
    assert keys["general.architecture"] == arch
    a = arch + "."
    assert keys[a + "attention.key_length"] == 64 and keys[a + "block_count"] == 1
    assert keys[a + "attention.head_count_kv"] == cfg.n_head_kv
    assert keys[a + "rope.dimension_count"] == cfg.rope_dim
    if pos == "cope":
        assert keys[a + "cope.npos_max"] == cfg.npos_max
        assert keys[a + "cope.scale_pos_logits"] == cfg.scale_pos_logits
        assert keys[a + "cope.per_head"] == cfg.cope_per_head
        want = (cfg.n_head, cfg.npos_max, 64) if cfg.cope_per_head else (cfg.npos_max, 64)
        assert tensors["blk.0.cope_pos.weight"].shape == want
    else:
        assert not any(k.startswith(a + "cope") for k in keys)
    assert ("output.weight" in tensors) == (not cfg.tied)
    assert tensors["blk.0.attn_k.weight"].shape == (cfg.n_head_kv * 64, cfg.n_embd)
    assert tensors["blk.0.ffn_down.weight"].shape == (cfg.n_embd, cfg.n_ff)
    sd = model.state_dict()
    wq = tensors["blk.0.attn_q.weight"]
    if pos == "rope":
        wq = unpermute_qk(wq, cfg.n_head)
    assert np.array_equal(wq, sd["blocks.0.attn.wq.weight"].numpy())
    assert np.array_equal(tensors["blk.0.ffn_gate.weight"], sd["blocks.0.ffn.w_gate.weight"].numpy())
    back, name = load_gguf(path)
    assert name == "flipflop"
    for k, v in back.state_dict().items():
        assert torch.equal(v, sd[k]), k
    ids = batch_tensors(task, np.random.default_rng(0), 2, "test")[0]
    with torch.no_grad():
        assert torch.equal(back(ids), model(ids))


def test_export_f16_q8_0(tmp_path):
    import gguf
    task = get_task("flipflop")
    model = _model(task, "cope")
    sd = model.state_dict()
    for outtype, tol in (("f16", 1e-3), ("q8_0", 1e-2)):
        path = export_gguf(model, task, tmp_path / f"m_{outtype}.gguf", outtype)
        r = gguf.GGUFReader(str(path))
        types = {t.name: t.tensor_type.name for t in r.tensors}
        assert types["blk.0.attn_q.weight"] == outtype.upper() and types["blk.0.attn_norm.weight"] == "F32"
        assert types["blk.0.cope_pos.weight"] == "F32"
        _, tensors = read_gguf(path)
        w = sd["blocks.0.attn.wq.weight"].numpy()
        assert np.abs(tensors["blk.0.attn_q.weight"] - w).max() <= tol * np.abs(w).max()


def test_tokenizer_round_trips_task_strings(tmp_path):
    import gguf
    from selfext_native.tokenizer import Tokenizer, read_gguf_fields
    for task in TASKS.values():
        model = Decoder(ModelConfig(n_vocab=task.n_vocab, pos="cope", n_layer=1))
        path = export_gguf(model, task, tmp_path / f"{task.name}.gguf")
        tok = Tokenizer.from_gguf_fields(read_gguf_fields(gguf.GGUFReader(str(path)), ("tokenizer.",)))
        assert tok.n_vocab == task.n_vocab and tok.bos_id == task.token_id(BOS)
        for split in task.splits:
            s = task_string(task, np.random.default_rng(5), split)
            ids = tok.encode(s, add_bos=False)
            assert ids == task.encode(s[len(BOS):]), (task.name, s)
            assert tok.decode(ids) == s


# --- the committed models ------------------------------------------------------------------------------

COMMITTED = sorted(DATA.glob("cope_*.gguf")) + sorted(DATA.glob("rope_*.gguf"))


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_models_solve_flipflop_in_distribution(path):
    """Torch reading the committed file back: in-distribution Flip-Flop error below 5 % of the read
    bits (a model that does not attend to the last write scores 50 %; see docs/cope_results.md for the
    measured figures, which are far below this bar)."""
    from selfext_native.train.trainer import evaluate
    torch.set_num_threads(1)
    model, name = load_gguf(path)
    assert name == "flipflop"
    r = evaluate(model, get_task("flipflop"), "test", n_seqs=200)
    assert r["token_error"] < 0.05, r


TWINS = sorted(DATA.glob("rope_*f32.gguf"))


@pytest.mark.parametrize("path", TWINS, ids=[p.name for p in TWINS])
def test_rope_twin_runs_in_our_llama_runtime(path):
    """The llama twin (Q/K permuted by the exporter) through our runtime gives the torch model's
    logits: float32 tolerance, prefill and token-by-token decode."""
    from selfext_native import LLM
    torch.set_num_threads(1)
    model, _ = load_gguf(path)
    ids = get_task("flipflop").sample(np.random.default_rng(7), 1, "test").ids[0, :-1]  # the trained length
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)[None])[0].numpy()
    llm = LLM(str(path), device="cpu", n_threads=1, kv_type="f32")
    tol = 1e-4 * np.abs(ref).max()
    assert np.abs(llm.logits(ids.tolist()) - ref).max() <= tol
    llm.reset()
    decoded = np.stack([llm.eval([int(t)]) for t in ids])
    assert np.abs(decoded.reshape(ref.shape) - ref).max() <= tol


def test_without_torch_the_error_says_so(monkeypatch):
    import sys
    import selfext_native.train as train
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match="needs PyTorch, an optional dependency"):
        train.require_torch()


# Our runtime's bound against torch on the same (dequantized) weights: float32 rounding for F32/F16
# files. For Q8_0 our kernels also round each activation row to 8 bits per 32-block (torch does not):
# |x|max/254 per element, ~0.4% of a block's largest value; the trained models' outlier channels make
# a block's largest value several times its typical one, and the worst logit moved by 2.3% of the logit
# scale in our measurement (2 layers + head), so the bound is 5% there. The task-accuracy check below
# is the behavioural one.
def _runtime_bound(path, ref):
    return (5e-2 if "q8_0" in path.name else 1e-4) * np.abs(ref).max()


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_models_run_in_our_runtime(path):
    """CoPE models (arch selfext-cope, fused CoPE kernel) and their RoPE twins (llama) through our
    LLM: logits equal the torch model's within the bound above, for a prefill and token-by-token
    decode; and, through our runtime alone, in-distribution Flip-Flop error below 5% of the scored
    tokens (chance is 50%; docs/cope_results.md has the measured figures)."""
    from selfext_native import LLM
    torch.set_num_threads(1)
    model, _ = load_gguf(path)
    task = get_task("flipflop")
    batch = task.sample(np.random.default_rng(7), 20, "test")
    llm = LLM(str(path), device="cpu", n_threads=1, kv_type="f32")
    ids = batch.ids[0, :-1]
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)[None])[0].numpy()
    bound = _runtime_bound(path, ref)
    assert np.abs(llm.logits(ids.tolist()) - ref).max() <= bound
    llm.reset()
    decoded = np.concatenate([llm.eval([int(t)]) for t in ids])
    assert np.abs(decoded - ref).max() <= bound
    wrong = total = 0
    for row, target in zip(batch.ids, batch.target):
        pred = llm.logits(row[:-1].tolist()).argmax(-1)       # predicts row[1:]
        mask = target[1:]
        wrong += int((pred[mask] != row[1:][mask]).sum())
        total += int(mask.sum())
    assert total > 0 and wrong / total < 0.05, (wrong, total)
