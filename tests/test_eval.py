"""The long-context tools on small synthetic models: passkey prompt mechanics and scoring, the Wilson
interval against hand-computed values, windowed perplexity against exp(mean NLL) from LLM.logits, the
SelfExtend auto rule and its refusal, and the RoPE overrides (llama.cpp's --rope-* flags)."""
import json
import os
import re

import numpy as np
import pytest

from selfext_native import LLM
from selfext_native import selfextend as se
from selfext_native.cli import main as cli_main
from selfext_native.errors import ArgumentError, ContextOverflowError
from selfext_native.eval import build_prompt, ntk_freq_base, run_passkey, run_perplexity, wilson_interval
from selfext_native.eval.passkey import FILLER, INTRO, QUESTION, key_line

import gguf_factory

# head_dim 64 (the kernels' smallest), GQA 2:1, a trained context of 128 so SelfExtend is exercised at 256.
SMALL = dict(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_vocab=300, n_ctx_train=128, qtype="F32")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("eval_models")


def _model(model_dir, name, **kw):
    path = os.path.join(model_dir, name + ".gguf")
    if not os.path.exists(path):
        gguf_factory.write_model(path, seed=11, **{**SMALL, **kw})  # one seed: same weights in every file
    return path


# --- Wilson interval --------------------------------------------------------------------------------

@pytest.mark.parametrize("k, n, low, high", [
    # Hand-computed from the Wilson score formula, z = 1.959964 (cross-checked against published tables:
    # 0/10 -> 0-27.75%, 8/10 -> 49.02-94.33%, 50/100 -> 40.38-59.62%).
    (0, 10, 0.0, 0.277531),
    (8, 10, 0.490162, 0.943318),
    (50, 100, 0.403832, 0.596168),
    (10, 10, 0.722469, 1.0),
    (1, 1, 0.206549, 1.0),
])
def test_wilson_interval_hand_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=2e-6)
    assert hi == pytest.approx(high, abs=2e-6)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ArgumentError, match="successes"):
        wilson_interval(3, 2)


# --- passkey ----------------------------------------------------------------------------------------

def test_build_prompt_places_the_key_by_depth():
    text, at = build_prompt(100, 12345, 0.0)
    assert text.startswith(INTRO + key_line(12345)) and at == len(INTRO)
    assert text.endswith(FILLER + QUESTION) and text.count(FILLER) == 100
    text, at = build_prompt(100, 12345, 1.0)
    assert text.endswith(key_line(12345) + QUESTION)
    for depth in (0.1, 0.37, 0.5, 0.9):
        text, at = build_prompt(100, 54321, depth)
        assert text[at:].startswith(key_line(54321))
        assert text[:at].count(FILLER) == int(depth * 100)
    with pytest.raises(ArgumentError, match="depth"):
        build_prompt(10, 12345, 1.5)


class _Oracle(LLM):
    """Answers with the key found in the prompt (or a wrong one), to test scoring without a real model."""
    wrong = False

    def generate(self, prompt, max_tokens=256, **kw):
        key = int(re.search(r"pass key is (\d{5})", self.detokenize(prompt)).group(1))
        return f" {key + 1 if self.wrong else key}. Remember"


def test_passkey_prompts_fill_the_context_and_score(model_dir, tmp_path):
    # SmolLM2's own tokenizer, so the prompt has realistic token counts (about 20 per filler line).
    path = _model(model_dir, "smollm2", tokenizer="smollm2", n_vocab=49152, qtype="Q8_0")
    llm = _Oracle(path, n_ctx=1024, self_extend="auto", n_threads=2)
    assert llm.group > 1  # 1024 > 128: auto turned SelfExtend on
    r = run_passkey(llm, trials=10, seed=3, depth_bins=5)
    budget = 1024 - 8
    per_line = len(llm.tokenize(FILLER * 20, add_bos=False)) / 20
    for t in r.trials:
        assert budget - 2 * per_line - 8 <= t.n_prompt_tokens <= budget  # as long as asked, never longer
        assert 10000 <= t.key <= 99999
        # The key sits at its depth, measured in tokens (filler lines are near-uniform in tokens).
        assert abs(t.key_token_pos / t.n_prompt_tokens - t.depth) < 0.06
    assert [b["n"] for b in r.by_depth()] == [2] * 5  # stratified depths
    assert len({t.key for t in r.trials}) > 1
    assert r.correct == 10 and r.accuracy == 1.0 and r.ci == wilson_interval(10, 10)

    llm.wrong = True
    r2 = run_passkey(llm, trials=4, seed=3, depth_bins=2)
    assert r2.correct == 0 and all(b["correct"] == 0 for b in r2.by_depth())
    # Same seed, same keys and depths.
    assert [t.key for t in r2.trials] == [t.key for t in r.trials[:4]]

    out = tmp_path / "pk.json"
    r.write_json(out)
    d = json.loads(out.read_text())
    assert d["correct"] == 10 and d["n"] == 10 and d["group"] == llm.group and len(d["trials"]) == 10
    assert d["ci_low"] == pytest.approx(0.722469, abs=2e-6)


def test_passkey_real_generation_and_cli(model_dir, tmp_path):
    path = _model(model_dir, "gpt2")
    r = run_passkey(path, n_ctx=256, trials=2, seed=0, n_threads=2)  # this toy vocabulary needs ~170 tokens
    assert r.group == 1 and r.n == 2
    for t in r.trials:  # a random model: whatever it says, the score follows the first number in it
        m = re.search(r"\d+", t.answer)
        assert t.correct == bool(m and m.group(0) == str(t.key))
    out = tmp_path / "cli.json"
    assert cli_main(["passkey", "-m", path, "-c", "200", "--grp-attn-n", "2", "--grp-attn-w", "32",
                     "--trials", "2", "-t", "2", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert (d["group"], d["window"], d["n_ctx"], d["n"]) == (2, 32, 200, 2)


def test_passkey_bad_arguments(model_dir):
    path = _model(model_dir, "gpt2")
    llm = LLM(path, n_ctx=128, n_threads=1)
    with pytest.raises(ArgumentError, match="n_tokens=125"):
        run_passkey(llm, trials=1, n_tokens=125)
    with pytest.raises(ArgumentError, match="too short"):
        run_passkey(llm, trials=1)  # the toy vocabulary needs ~170 tokens for the bare prompt
    with pytest.raises(ArgumentError, match="trials"):
        run_passkey(llm, trials=0)
    with pytest.raises(ArgumentError, match="n_ctx=256"):
        run_passkey(llm, n_ctx=256, trials=1)
    with pytest.raises(ArgumentError, match="too short"):
        run_passkey(llm, trials=1, n_tokens=20)


# --- perplexity -------------------------------------------------------------------------------------

def _hand_nll(llm, window):
    """-log p(window[p] | window[:p]) for p >= 1, float64, from one LLM.logits call."""
    lg = llm.logits(window).astype(np.float64)
    lsm = lg - lg.max(1, keepdims=True)
    lsm -= np.log(np.exp(lsm).sum(1, keepdims=True))
    return -lsm[np.arange(len(window) - 1), np.asarray(window[1:])]


@pytest.mark.parametrize("tokenizer, self_extend, n_ctx", [
    ("llama", None, 64),       # adds BOS: each window is BOS + 63 text tokens
    ("gpt2", None, 64),        # no BOS: 64 text tokens
    ("llama", "auto", 256),    # past the trained 128 with SelfExtend
])
def test_perplexity_is_exp_mean_nll(model_dir, rng, tokenizer, self_extend, n_ctx):
    path = _model(model_dir, tokenizer, tokenizer=tokenizer)
    llm = LLM(path, n_ctx=n_ctx, self_extend=self_extend, kv_type="f32", n_threads=2)
    bos = llm.tokenizer.bos_id if llm.tokenizer.add_bos else None
    span = n_ctx - (bos is not None)
    toks = rng.integers(3, 300, size=2 * span + span // 2).tolist()  # 2 full windows and a partial one
    r = run_perplexity(llm, tokens=toks, chunk=24, bucket=16)  # chunks not aligned with buckets
    assert r.n_windows == 2 and r.n_scored == 2 * (n_ctx - 1)
    nlls = [_hand_nll(llm, ([bos] if bos is not None else []) + toks[w * span:(w + 1) * span]) for w in range(2)]
    allnll = np.concatenate(nlls)
    assert r.nll == pytest.approx(allnll.mean(), rel=1e-5)
    assert r.ppl == pytest.approx(np.exp(allnll.mean()), rel=1e-5)
    assert r.window_ppl == pytest.approx([np.exp(n.mean()) for n in nlls], rel=1e-5)
    pos = np.arange(1, n_ctx)
    curve = r.curve()
    assert len(curve) == n_ctx // 16
    for c in curve:
        sel = (pos >= c["start"]) & (pos < c["end"])
        assert c["n"] == 2 * sel.sum()
        assert c["mean_nll"] == pytest.approx(np.concatenate([n[sel] for n in nlls]).mean(), rel=1e-5)
    split = r.split_at_trained()
    if n_ctx > 128:
        assert r.group > 1 and split["nll_beyond_trained"] == pytest.approx(allnll.reshape(2, -1)[:, 127:].mean(),
                                                                             rel=1e-5)
    else:
        assert split["nll_beyond_trained"] is None


def test_perplexity_text_json_plot_and_errors(model_dir, tmp_path):
    path = _model(model_dir, "gpt2")
    llm = LLM(path, n_ctx=64, n_threads=2)
    text = "the quick brown fox jumps over the lazy dog. " * 40
    n_tok = len(llm.tokenize(text, add_bos=False, special=False))
    r = run_perplexity(llm, text, source="fox.txt", max_windows=2)
    assert r.n_text_tokens == n_tok and r.n_windows == min(2, n_tok // 64) and r.source == "fox.txt"
    out = tmp_path / "ppl.json"
    r.write_json(out)
    d = json.loads(out.read_text())
    assert d["ppl"] == pytest.approx(r.ppl) and len(d["curve"]) == 64

    png = tmp_path / "loss.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ArgumentError, match="matplotlib"):
            r.plot(png)
    else:
        r.plot(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(ArgumentError, match="fewer than one window"):
        run_perplexity(llm, "short text")
    with pytest.raises(ArgumentError, match="exactly one"):
        run_perplexity(llm)

    f = tmp_path / "fox.txt"
    f.write_text(text)
    j = tmp_path / "cli_ppl.json"
    assert cli_main(["perplexity", "-m", path, "-f", str(f), "-c", "64", "-t", "2", "--rope-scale", "2",
                     "--max-windows", "1", "--json", str(j)]) == 0
    d = json.loads(j.read_text())
    assert d["rope"]["scaling_type"] == "linear" and d["rope"]["scaling_factor"] == 2.0 and d["n_windows"] == 1


# --- the SelfExtend auto rule -----------------------------------------------------------------------

def test_auto_rule_hand_values():
    # W = L/8 = 1024 and the grouped span (n-1)//G + W - W//G held to L/4 = 2048: at 16384 G = 15 spans
    # 1092 + 1024 - 68 = 2048 and G = 14 spans 1170 + 1024 - 73 = 2121 (measured: docs/long_context.md).
    assert se.auto(8192, 4096) == (1, 1024)
    assert se.auto(8192, 8192) == (1, 1024)
    assert se.auto(8192, 8193) == (7, 1024)
    assert se.auto(8192, 16384) == (15, 1024)
    assert se.auto(8192, 24576) == (23, 1024)
    assert se.auto(8192, 32768) == (31, 1024)
    assert se.grouped_span(32768, 31, 1024) == 32767 // 31 + 1024 - 1024 // 31 == 2048
    assert se.grouped_span(32768, 30, 1024) == 1092 + 1024 - 34  # 2082: too far
    assert se.grouped_span(500, 4, 1024) == 499  # every pair a neighbor: the plain distance
    for n in range(8193, 66_000, 997):  # the smallest G whose span fits, always, and it covers n
        g, w = se.auto(8192, n)
        assert se.grouped_span(n, g, w) <= 2048 < (se.grouped_span(n, g - 1, w) if g > 2 else 10 ** 9)
        assert se.validate(g, w, 8192, n) == (g, w)
    # Past what MAX_GROUP holds to L/4 (70k for an 8k model) auto stays at MAX_GROUP while it covers.
    assert se.auto(8192, 100_000) == (se.MAX_GROUP, 1024)
    assert se.grouped_span(100_000, se.MAX_GROUP, 1024) > 2048
    assert se.auto(64, 3550) == (se.MAX_GROUP, 8)


def test_auto_rule_refusals():
    with pytest.raises(ContextOverflowError, match=r"29696 tokens; G=5 covers it"):
        se.validate(4, 1024, 8192, 32768)
    assert se.validate(5, 1024, 8192, 32768) == (5, 1024)
    with pytest.raises(ContextOverflowError, match="beyond what SelfExtend reaches"):
        se.auto(8192, 10 ** 7)
    with pytest.raises(ArgumentError, match="window"):
        se.validate(2, 8192, 8192, 9000)


def test_llm_refuses_an_uncovered_context(model_dir):
    path = _model(model_dir, "gpt2")
    # L = 128, W = 16: G=2 reaches 2*(112+8) = 240 tokens, G=3 reaches 3*(112+5) = 351.
    with pytest.raises(ContextOverflowError, match="n_ctx=300.*G=3 covers it"):
        LLM(path, n_ctx=300, self_extend=(2, 16))
    llm = LLM(path, n_ctx=300, self_extend="auto", n_threads=1)
    assert (llm.group, llm.window) == (18, 16)  # auto: the grouped span 299 // 18 + 16 - 0 = 32 = L/4


# --- RoPE overrides ---------------------------------------------------------------------------------

def test_rope_overrides(model_dir, rng):
    plain = _model(model_dir, "gpt2")
    toks = rng.integers(0, 300, size=100).tolist()
    base = LLM(plain, n_ctx=128, kv_type="f32", n_threads=2).logits(toks)
    # Factor 1 is the file's RoPE, exactly.
    for kw in (dict(rope_scale=1.0), dict(rope_scaling="linear", rope_scale=1.0), dict(rope_scaling="none")):
        np.testing.assert_array_equal(LLM(plain, n_ctx=128, kv_type="f32", n_threads=2, **kw).logits(toks), base)
    # Linear scale 4 changes the logits, and equals a file that declares the same scaling.
    lin = LLM(plain, n_ctx=128, kv_type="f32", n_threads=2, rope_scaling="linear", rope_scale=4.0)
    assert lin.rope.scaling_type == "linear" and lin.rope.scaling_factor == 4.0
    ours = lin.logits(toks)
    assert np.abs(ours - base).max() > 1e-3 * np.abs(base).max()
    lin_file = _model(model_dir, "gpt2-linear4", rope_scaling={"type": "linear", "factor": 4})
    np.testing.assert_array_equal(LLM(lin_file, n_ctx=128, kv_type="f32", n_threads=2).logits(toks), ours)
    # --rope-scale alone on a linear file replaces its factor; --rope-scaling none removes it.
    np.testing.assert_array_equal(
        LLM(lin_file, n_ctx=128, kv_type="f32", n_threads=2, rope_scaling="none").logits(toks), base)
    # YaRN measured against the trained context (128), as a file with original_context_length would be.
    yarn = LLM(plain, n_ctx=128, kv_type="f32", n_threads=2, rope_scaling="yarn", rope_scale=4.0)
    assert yarn.rope.yarn_orig_ctx == 128
    yarn_file = _model(model_dir, "gpt2-yarn4", rope_scaling={"type": "yarn", "factor": 4,
                                                              "original_context_length": 128})
    y = yarn.logits(toks)
    np.testing.assert_array_equal(LLM(yarn_file, n_ctx=128, kv_type="f32", n_threads=2).logits(toks), y)
    assert np.abs(y - ours).max() > 1e-3 * np.abs(base).max()
    # NTK-aware: a new base.
    b = ntk_freq_base(10000.0, 4.0, 64)
    assert b == pytest.approx(10000.0 * 4.0 ** (64 / 62))
    b = float(np.float32(b))  # GGUF stores the base as float32
    ntk_file = _model(model_dir, "gpt2-base", rope_freq_base=b)
    np.testing.assert_array_equal(
        LLM(plain, n_ctx=128, kv_type="f32", n_threads=2, rope_freq_base=b).logits(toks),
        LLM(ntk_file, n_ctx=128, kv_type="f32", n_threads=2).logits(toks))


def test_rope_override_errors(model_dir):
    path = _model(model_dir, "gpt2")
    with pytest.raises(ArgumentError, match="rope_scaling"):
        LLM(path, rope_scaling="ntk")
    with pytest.raises(ArgumentError, match="rope_scale must"):
        LLM(path, rope_scale=0.0)
    with pytest.raises(ArgumentError, match="rope_freq_base"):
        LLM(path, rope_freq_base=0.5)
    with pytest.raises(ArgumentError, match="needs rope_scale"):
        LLM(path, rope_scaling="yarn")
    with pytest.raises(SystemExit):
        cli_main(["run", "-m", path, "-p", "x", "--rope-scaling", "ntk"])
