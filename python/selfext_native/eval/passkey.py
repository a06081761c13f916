"""Passkey retrieval: the classic long-context test (llama.cpp's `passkey` example, LongLM's eval).

A random 5-digit key is hidden at a chosen depth in repeated filler; the model must repeat it after
"What is the pass key? The pass key is". The filler count is chosen per trial so the prompt is as long
as asked (tokenized to check), leaving room for the answer inside n_ctx. The answer is greedy; a trial
is correct when the first number in the answer is the key. Accuracy comes with a 95% Wilson interval,
overall and per depth bin. Depths are stratified: trial t lands in bin t mod n_bins, uniformly inside
it, so even a few trials cover every depth.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence, Union

from ..errors import ArgumentError

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there. ")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "What is the pass key? The pass key is"
Z95 = 1.959963984540054  # two-sided 95% normal quantile


def key_line(key: int) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key. "


def build_prompt(n_filler: int, key: int, depth: float) -> tuple[str, int]:
    """The prompt text and the character offset of the key line: n_filler filler lines with the key
    line inserted before line floor(depth * n_filler)."""
    if n_filler < 0:
        raise ArgumentError(f"n_filler must be >= 0, got {n_filler}")
    if not 0.0 <= depth <= 1.0:
        raise ArgumentError(f"depth must be in [0, 1], got {depth}")
    at = min(n_filler, int(depth * n_filler))
    head = INTRO + FILLER * at
    return head + key_line(key) + FILLER * (n_filler - at) + QUESTION, len(head)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927): (low, high); (0, 1) when n = 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ArgumentError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


@dataclass
class PasskeyTrial:
    key: int
    depth: float               # requested depth in [0, 1)
    n_filler: int
    n_prompt_tokens: int
    key_token_pos: int         # index of the key line's first token in the prompt
    answer: str
    correct: bool
    prefill_seconds: float


@dataclass
class PasskeyResult:
    model: str
    n_ctx: int
    n_ctx_train: int
    target_tokens: int         # the prompt length asked for (each prompt is at most this long)
    group: int                 # SelfExtend G (1 = off)
    window: int                # SelfExtend W
    rope: dict                 # the RoPE settings used (after overrides)
    seed: int
    device: str
    n_threads: int
    trials: list = field(default_factory=list)
    depth_bins: int = 5

    @property
    def n(self) -> int:
        return len(self.trials)

    @property
    def correct(self) -> int:
        return sum(t.correct for t in self.trials)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    def by_depth(self) -> list[dict]:
        out = []
        for b in range(self.depth_bins):
            lo, hi = b / self.depth_bins, (b + 1) / self.depth_bins
            ts = [t for t in self.trials if min(int(t.depth * self.depth_bins), self.depth_bins - 1) == b]
            k = sum(t.correct for t in ts)
            low, high = wilson_interval(k, len(ts))
            out.append(dict(depth_lo=lo, depth_hi=hi, n=len(ts), correct=k,
                            accuracy=k / len(ts) if ts else None, ci_low=low, ci_high=high))
        return out

    def to_dict(self) -> dict:
        low, high = self.ci
        d = {k: v for k, v in asdict(self).items() if k != "trials"}
        d.update(n=self.n, correct=self.correct, accuracy=self.accuracy, ci_low=low, ci_high=high,
                 by_depth=self.by_depth(), trials=[asdict(t) for t in self.trials],
                 mean_prompt_tokens=sum(t.n_prompt_tokens for t in self.trials) / max(self.n, 1),
                 prefill_tps=sum(t.n_prompt_tokens for t in self.trials)
                 / max(sum(t.prefill_seconds for t in self.trials), 1e-9))
        return d

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    def summary(self) -> str:
        low, high = self.ci
        se = f"SelfExtend G={self.group} W={self.window}" if self.group > 1 else "SelfExtend off"
        lines = [f"passkey: {self.correct}/{self.n} = {100 * self.accuracy:.1f}% "
                 f"(95% Wilson {100 * low:.1f}-{100 * high:.1f}%), prompt ~{self.target_tokens} tokens, "
                 f"n_ctx {self.n_ctx} (trained {self.n_ctx_train}), {se}, rope {self.rope['scaling_type']}"
                 f" x{self.rope['scaling_factor']:g} base {self.rope['freq_base']:g}",
                 "| depth | correct | accuracy | 95% CI |", "|---|---|---|---|"]
        for b in self.by_depth():
            acc = "—" if b["accuracy"] is None else f"{100 * b['accuracy']:.0f}%"
            lines.append(f"| {b['depth_lo']:.1f}–{b['depth_hi']:.1f} | {b['correct']}/{b['n']} | {acc} | "
                         f"{100 * b['ci_low']:.0f}–{100 * b['ci_high']:.0f}% |")
        return "\n".join(lines)


def open_llm(llm_or_path, n_ctx: Optional[int], llm_kwargs: dict):
    """An LLM: the one given (n_ctx must agree), or one loaded from a path (None = the default model)."""
    from ..llm import LLM

    if isinstance(llm_or_path, LLM):
        if llm_kwargs:
            raise ArgumentError(f"model options {sorted(llm_kwargs)} apply only when loading from a path; "
                                "this LLM is already loaded")
        if n_ctx is not None and n_ctx != llm_or_path.n_ctx:
            raise ArgumentError(f"n_ctx={n_ctx} but the given LLM was loaded with n_ctx={llm_or_path.n_ctx}")
        return llm_or_path
    if llm_or_path is not None and not isinstance(llm_or_path, (str, os.PathLike)):
        raise ArgumentError(f"llm_or_path must be an LLM, a path or None, got {type(llm_or_path).__name__}")
    return LLM(llm_or_path, n_ctx=n_ctx, **llm_kwargs)


def fit_filler(tokenize: Callable[[str], Sequence[int]], max_tokens: int, key: int = 99999) -> int:
    """The largest filler count whose prompt tokenizes to at most max_tokens (key at mid depth)."""
    n0 = len(tokenize(build_prompt(0, key, 0.5)[0]))
    if n0 > max_tokens:
        raise ArgumentError(f"the passkey prompt needs at least {n0} tokens; n_tokens={max_tokens} is too short")
    per = (len(tokenize(build_prompt(20, key, 0.5)[0])) - n0) / 20.0
    n = max(0, int((max_tokens - n0) / per))
    while n > 0 and len(tokenize(build_prompt(n, key, 0.5)[0])) > max_tokens:
        n -= 1
    while len(tokenize(build_prompt(n + 1, key, 0.5)[0])) <= max_tokens:
        n += 1
    return n


def run_passkey(llm_or_path=None, n_ctx: Optional[int] = None, trials: int = 10, seed: int = 0, *,
                n_tokens: Optional[int] = None, depth_bins: int = 5, answer_tokens: int = 8,
                progress: Optional[Callable[[int, PasskeyTrial], None]] = None, **llm_kwargs) -> PasskeyResult:
    """Run `trials` passkey trials with prompts of about n_tokens tokens (default: n_ctx - answer_tokens).

    llm_or_path: a loaded LLM (reused across trials, its cache reset each trial), a GGUF path, or None
    for the default model; llm_kwargs (self_extend, n_threads, rope_scaling, ...) go to LLM() when
    loading. progress(i, trial) is called after each trial."""
    for name, v, low in (("trials", trials, 1), ("depth_bins", depth_bins, 1), ("answer_tokens", answer_tokens, 6)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ArgumentError(f"{name} must be an integer >= {low}, got {v!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ArgumentError(f"seed must be an integer, got {seed!r}")
    llm = open_llm(llm_or_path, n_ctx, llm_kwargs)
    budget = llm.n_ctx - answer_tokens
    if n_tokens is None:
        n_tokens = budget
    if not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or n_tokens < 1:
        raise ArgumentError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    if n_tokens > budget:
        raise ArgumentError(f"n_tokens={n_tokens} leaves no room for the {answer_tokens}-token answer in "
                            f"n_ctx={llm.n_ctx}: use at most {budget}")
    tokenize = llm.tokenize
    n_filler = fit_filler(tokenize, n_tokens)
    rng_key, rng_depth = random.Random(seed), random.Random(seed + 0x5EED)  # same keys whatever depth_bins
    order = list(range(depth_bins))
    rope = llm.rope
    result = PasskeyResult(
        model=os.path.basename(llm.model_path), n_ctx=llm.n_ctx, n_ctx_train=llm.desc.n_ctx_train,
        target_tokens=n_tokens, group=llm.group, window=llm.window,
        rope=dict(scaling_type=rope.scaling_type, scaling_factor=rope.scaling_factor, freq_base=rope.freq_base),
        seed=seed, device=llm.device, n_threads=llm.n_threads, depth_bins=depth_bins)
    for i in range(trials):
        if i % depth_bins == 0:
            rng_depth.shuffle(order)
        depth = (order[i % depth_bins] + rng_depth.random()) / depth_bins
        key = rng_key.randint(10000, 99999)
        n = n_filler
        while True:  # the key's digits can tokenize a little longer than the probe key's
            text, key_char = build_prompt(n, key, depth)
            ids = tokenize(text)
            if len(ids) <= n_tokens or n == 0:
                break
            n -= 1
        if len(ids) > n_tokens:
            raise ArgumentError(f"the passkey prompt needs {len(ids)} tokens; n_tokens={n_tokens} is too short")
        key_pos = len(tokenize(text[:key_char]))
        llm.reset()
        answer = llm.generate(ids, answer_tokens, temperature=0)
        m = re.search(r"\d+", answer)
        trial = PasskeyTrial(key=key, depth=depth, n_filler=n, n_prompt_tokens=len(ids), key_token_pos=key_pos,
                             answer=answer, correct=bool(m and m.group(0) == str(key)),
                             prefill_seconds=llm.last_timings.prompt_seconds)
        result.trials.append(trial)
        if progress is not None:
            progress(i, trial)
    return result

