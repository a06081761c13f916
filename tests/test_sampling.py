"""Sampling: greedy, reproducibility, distributions against softmax, the truncation rules, the repeat
penalty, validation, and stop strings across streamed pieces.

Expected sets and distributions come from plain loops over the probabilities written here, not from
the sampler's own helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from selfext_native.errors import ArgumentError, ArrayTypeError
from selfext_native.sampling import Sampler, SamplingParams, StopMatcher

OFF = dict(top_k=0, top_p=1.0, min_p=0.0)  # no truncation


def ref_softmax(logits, temperature=1.0):
    z = [v / temperature for v in logits]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def draw_counts(sampler, logits, n, previous=None):
    counts = np.zeros(len(logits), dtype=np.int64)
    for _ in range(n):
        counts[sampler.sample(logits, previous)] += 1
    return counts


def chi_square(counts, probs):
    n = counts.sum()
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs) if p > 0)


# --- greedy and reproducibility ----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_greedy_is_argmax(seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(49152).astype(np.float32)
    s = Sampler(SamplingParams(temperature=0.0))
    assert s.sample(logits) == int(np.argmax(logits))
    assert Sampler(SamplingParams(temperature=0, top_k=3, top_p=0.1, min_p=0.9)).sample(logits) == \
        int(np.argmax(logits))


def test_seeded_runs_repeat_and_seeds_differ():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(1000).astype(np.float32)
    p = SamplingParams(temperature=1.5, seed=1234, **OFF)
    s1, s2 = Sampler(p), Sampler(p)
    seq1 = [s1.sample(logits) for _ in range(200)]
    seq2 = [s2.sample(logits) for _ in range(200)]
    assert seq1 == seq2
    s3 = Sampler(SamplingParams(temperature=1.5, seed=4321, **OFF))
    assert [s3.sample(logits) for _ in range(200)] != seq1
    s1.reseed(1234)
    assert [s1.sample(logits) for _ in range(200)] == seq1


def test_logits_are_not_modified():
    logits = np.linspace(-3, 3, 50, dtype=np.float32)
    before = logits.copy()
    Sampler(SamplingParams(repeat_penalty=1.3, seed=0)).sample(logits, [1, 2, 49])
    assert np.array_equal(logits, before)


# --- distributions -----------------------------------------------------------------------------------

# chi-square critical value at p = 0.999 for 7 degrees of freedom is 24.3; the bound is looser still.
CHI2_BOUND = 35.0


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_sampling_follows_softmax(temperature):
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=temperature, seed=7, **OFF))
    counts = draw_counts(s, logits, 20000)
    assert chi_square(counts, ref_softmax(logits.tolist(), temperature)) < CHI2_BOUND


def test_distribution_test_can_fail():
    # The same check rejects a sampler that ignores temperature.
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5], dtype=np.float32)
    counts = draw_counts(Sampler(SamplingParams(temperature=1.0, seed=7, **OFF)), logits, 20000)
    assert chi_square(counts, ref_softmax(logits.tolist(), 0.5)) > CHI2_BOUND


def test_top_k_renormalizes_over_the_k_best():
    logits = np.array([0.3, 2.0, -1.0, 1.2, 0.9, 1.7, -0.2, 0.0], dtype=np.float32)
    k = 3
    best = sorted(range(8), key=lambda i: -logits[i])[:k]
    sub = ref_softmax([float(logits[i]) for i in best], 0.9)
    probs = [0.0] * 8
    for i, p in zip(best, sub):
        probs[i] = p
    counts = draw_counts(Sampler(SamplingParams(temperature=0.9, top_k=k, top_p=1.0, min_p=0.0, seed=3)),
                         logits, 20000)
    assert set(np.flatnonzero(counts)) == set(best)
    assert chi_square(counts, probs) < CHI2_BOUND


def test_top_k_on_a_large_vocabulary_keeps_exactly_the_top_k():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal(49152).astype(np.float32)
    k = 5
    top = set(np.argsort(-logits)[:k].tolist())
    s = Sampler(SamplingParams(temperature=5.0, top_k=k, top_p=1.0, min_p=0.0, seed=11))
    ids, prob = s.candidates(logits)
    assert set(ids.tolist()) == top and abs(prob.sum() - 1) < 1e-12
    seen = {s.sample(logits) for _ in range(500)}
    assert seen == top


def _ref_top_p_set(probs, top_p):
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    keep, total = [], 0.0
    for i in order:
        keep.append(i)
        total += probs[i]
        if total >= top_p:
            break
    return set(keep)


@pytest.mark.parametrize("top_p,expected", [(0.4, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (0.99, {0, 1, 2, 3})])
def test_top_p_keeps_the_shortest_prefix_reaching_p(top_p, expected):
    probs = [0.5, 0.3, 0.15, 0.05]
    assert _ref_top_p_set(probs, top_p) == expected
    logits = np.log(np.array(probs, dtype=np.float32))
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0, seed=2))
    counts = draw_counts(s, logits, 4000)
    assert set(np.flatnonzero(counts)) == expected
    kept = sorted(expected)
    ref = [0.0] * 4
    for i in kept:
        ref[i] = probs[i] / sum(probs[j] for j in kept)
    assert chi_square(counts, ref) < CHI2_BOUND


@pytest.mark.parametrize("min_p,expected", [(0.05, {0, 1, 2, 3}), (0.2, {0, 1, 2}), (0.5, {0, 1}), (1.0, {0})])
def test_min_p_drops_tokens_below_a_fraction_of_the_best(min_p, expected):
    probs = [0.5, 0.3, 0.15, 0.05]
    assert {i for i, p in enumerate(probs) if p >= min_p * max(probs)} == expected
    logits = np.log(np.array(probs, dtype=np.float64))
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=min_p, seed=4))
    assert set(np.flatnonzero(draw_counts(s, logits, 3000))) == expected


def test_truncation_happens_before_temperature():
    # With a high temperature the tail would be likely, but top-p and min-p judge the T=1 distribution.
    probs = [0.7, 0.2, 0.06, 0.04]
    logits = np.log(np.array(probs))
    s = Sampler(SamplingParams(temperature=50.0, top_k=0, top_p=0.85, min_p=0.0, seed=9))
    assert set(np.flatnonzero(draw_counts(s, logits, 2000))) == {0, 1}
    s = Sampler(SamplingParams(temperature=50.0, top_k=0, top_p=1.0, min_p=0.2, seed=9))
    assert set(np.flatnonzero(draw_counts(s, logits, 2000))) == {0, 1}


# --- repeat penalty ----------------------------------------------------------------------------------

def ref_penalize(logits, previous, penalty, last_n):
    out = list(logits)
    window = previous if last_n == -1 else previous[-last_n:] if last_n > 0 else []
    for t in set(window):
        out[t] = out[t] / penalty if out[t] > 0 else out[t] * penalty
    return out


@pytest.mark.parametrize("logits,previous,penalty,last_n", [
    ([2.0, 1.9, -0.5, -0.6], [0], 1.5, 64),      # positive logit divided: token 1 wins
    ([-1.0, -1.2, -3.0], [0], 1.5, 64),          # negative logit multiplied: token 1 wins
    ([2.0, 1.9, 0.0], [0, 2, 2, 2], 1.5, 2),     # token 0 is outside the window: still wins
    ([2.0, 1.9, 0.0], [0, 2, 2, 2], 1.5, -1),    # whole history: token 0 penalized
    ([2.0, 1.9, 0.0], [0, 0, 0], 1.5, 0),        # window 0: off
    ([1.0, 1.1, 0.0], [1], 0.5, 64),             # penalty < 1 rewards repeats
])
def test_repeat_penalty_matches_reference(logits, previous, penalty, last_n):
    expected = int(np.argmax(ref_penalize(logits, previous, penalty, last_n)))
    s = Sampler(SamplingParams(temperature=0.0, repeat_penalty=penalty, repeat_last_n=last_n))
    assert s.sample(np.array(logits, dtype=np.float32), previous) == expected


def test_repeat_penalty_distribution():
    logits = [1.0, 0.5, -0.5, 0.0]
    previous = [0, 2, 0]
    s = Sampler(SamplingParams(temperature=1.0, repeat_penalty=2.0, seed=21, **OFF))
    counts = draw_counts(s, np.array(logits, dtype=np.float32), 20000, previous)
    assert chi_square(counts, ref_softmax(ref_penalize(logits, previous, 2.0, 64))) < CHI2_BOUND


# --- validation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,name", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature="hot"), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_k=True), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(min_p=-0.01), "min_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(repeat_penalty=0.0), "repeat_penalty"),
    (dict(repeat_penalty=-1.0), "repeat_penalty"),
    (dict(repeat_last_n=-2), "repeat_last_n"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens="10"), "max_tokens"),
    (dict(stop=[""]), "stop"),
    (dict(stop=[1]), "stop"),
    (dict(stop=None), "stop"),
])
def test_params_validation_names_the_parameter(kw, name):
    with pytest.raises(ArgumentError, match=name):
        SamplingParams(**kw)


def test_params_defaults_are_llama_cpp():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.repeat_last_n) == \
        (0.8, 40, 0.95, 0.05, 1.0, 64)
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(temperature=0).greedy


def test_bad_logits_and_ids():
    s = Sampler(SamplingParams(seed=0))
    with pytest.raises(ArrayTypeError, match="1-D"):
        s.sample(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ArrayTypeError, match="float"):
        s.sample(np.zeros(3, dtype=np.int32))
    with pytest.raises(ArgumentError, match="NaN"):
        s.sample(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ArgumentError, match="-inf"):
        s.sample(np.full(3, -np.inf, dtype=np.float32))
    s = Sampler(SamplingParams(repeat_penalty=1.1))
    with pytest.raises(ArgumentError, match="previous_ids"):
        s.sample(np.zeros(3, dtype=np.float32), [5])
    with pytest.raises(ArgumentError, match="params"):
        Sampler({"temperature": 0})


def test_masked_logits_are_never_drawn():
    logits = np.array([0.0, -np.inf, 0.0, -np.inf], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=1.0, seed=0, **OFF))
    assert set(np.flatnonzero(draw_counts(s, logits, 500))) == {0, 2}


# --- stop strings ------------------------------------------------------------------------------------

def test_stop_across_pieces_holds_back_partial_matches():
    m = StopMatcher(["<|end|>"])
    assert m.push("Hel") == "Hel"
    assert m.push("lo <") == "lo "          # "<" might start the stop string
    assert m.push("|en") == ""
    assert m.push("d|> tail") == ""
    assert m.stopped and m.stop == "<|end|>"
    assert m.push("more") == "" and m.flush() == ""


def test_false_partial_match_is_released():
    m = StopMatcher(["<|end|>"])
    assert m.push("a<|") == "a"
    assert m.push("x") == "<|x"
    assert not m.stopped
    assert m.push("<") == "" and m.flush() == "<"


def test_earliest_stop_wins():
    m = StopMatcher(["world", "lo"])
    assert m.push("hello world") == "hel" and m.stop == "lo"


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="ab<|>\n", max_size=30),
       stops=st.lists(st.text(alphabet="ab<|>\n", min_size=1, max_size=4), min_size=1, max_size=3),
       cuts=st.lists(st.integers(0, 30), max_size=8))
def test_stop_matcher_equals_find_on_the_whole_text(text, stops, cuts):
    points = sorted({c for c in cuts if c <= len(text)} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(points, points[1:])]
    m = StopMatcher(stops)
    out = "".join(m.push(p) for p in pieces) + m.flush()
    found = [text.find(s) for s in stops if text.find(s) >= 0]
    assert out == (text[:min(found)] if found else text)
    assert m.stopped == bool(found)


def test_stop_matcher_validation():
    with pytest.raises(ArgumentError, match="stop"):
        StopMatcher([""])
    with pytest.raises(ArgumentError, match="piece"):
        StopMatcher(["x"]).push(3)
