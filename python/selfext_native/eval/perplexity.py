"""Perplexity of a long text in non-overlapping windows of n_ctx tokens, with the loss by position.

Each window starts fresh (cache reset) with the model's BOS token when it adds one, then n_ctx - 1
text tokens (n_ctx without BOS); only full windows count. Every token after the first of a window is
scored, so the per-position curve shows what happens past the trained context: position p's loss is
-log P(token p | tokens < p), averaged over windows and over buckets of positions. The window runs
through `LLM.eval(all_logits=True)` one chunk at a time and each chunk's log-softmax is taken at once,
so at most one chunk of logits (chunk, n_vocab) float32 is alive: a 32k window of a 49k vocabulary
would be 6 GiB as a whole.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..errors import ArgumentError
from .passkey import open_llm


def chunk_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, float64: (rows, n_vocab) float32, (rows,) -> (rows,)."""
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0].astype(np.float64) + np.log(np.exp(logits - m).sum(axis=1, dtype=np.float64))
    return lse - logits[np.arange(len(targets)), targets].astype(np.float64)


@dataclass
class PerplexityResult:
    model: str
    source: str                # what was scored (file name), with its sha256
    sha256: str
    n_text_tokens: int
    n_ctx: int
    n_ctx_train: int
    group: int
    window: int
    rope: dict
    device: str
    n_threads: int
    bos: bool                  # each window starts with BOS
    bucket: int                # positions per curve bucket
    n_windows: int = 0
    nll_sum: float = 0.0
    n_scored: int = 0
    window_ppl: list = field(default_factory=list)
    curve_sum: list = field(default_factory=list)    # per bucket: summed NLL over windows
    curve_count: list = field(default_factory=list)  # per bucket: scored tokens
    seconds: float = 0.0

    @property
    def nll(self) -> float:
        return self.nll_sum / self.n_scored if self.n_scored else float("nan")

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    def curve(self) -> list[dict]:
        return [dict(start=b * self.bucket, end=min((b + 1) * self.bucket, self.n_ctx),
                     mean_nll=s / c if c else None, n=c)
                for b, (s, c) in enumerate(zip(self.curve_sum, self.curve_count))]

    def split_at_trained(self) -> dict:
        """Mean NLL of buckets inside the trained window and of those past it."""
        inside = [(s, c) for b, (s, c) in enumerate(zip(self.curve_sum, self.curve_count))
                  if (b + 1) * self.bucket <= self.n_ctx_train]
        beyond = [(s, c) for b, (s, c) in enumerate(zip(self.curve_sum, self.curve_count))
                  if b * self.bucket >= self.n_ctx_train]
        mean = lambda xs: sum(s for s, _ in xs) / sum(c for _, c in xs) if sum(c for _, c in xs) else None
        return dict(nll_inside_trained=mean(inside), nll_beyond_trained=mean(beyond))

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("curve_sum", "curve_count")}
        d.update(nll=self.nll, ppl=self.ppl, curve=self.curve(), **self.split_at_trained(),
                 tokens_per_second=self.n_windows * self.n_ctx / max(self.seconds, 1e-9))
        return d

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    def summary(self) -> str:
        se = f"SelfExtend G={self.group} W={self.window}" if self.group > 1 else "SelfExtend off"
        s = self.split_at_trained()
        out = (f"perplexity: {self.ppl:.4f} (mean NLL {self.nll:.4f}) over {self.n_windows} windows of "
               f"{self.n_ctx} tokens ({self.n_scored} scored) of {self.source}; trained ctx {self.n_ctx_train}, "
               f"{se}, rope {self.rope['scaling_type']} x{self.rope['scaling_factor']:g} "
               f"base {self.rope['freq_base']:g}")
        if s["nll_beyond_trained"] is not None:
            out += (f"\n  mean NLL inside the trained window {s['nll_inside_trained']:.4f}, "
                    f"past it {s['nll_beyond_trained']:.4f}")
        return out

    def plot(self, path: Union[str, os.PathLike], label: Optional[str] = None, others: Sequence = ()) -> None:
        """The loss curve (and those of `others`, PerplexityResults) as a PNG; needs matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ArgumentError("plotting needs matplotlib: pip install matplotlib") from e
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for r in (self, *others):
            xs = [(c["start"] + c["end"]) / 2 for c in r.curve() if c["n"]]
            ys = [c["mean_nll"] for c in r.curve() if c["n"]]
            se = f"SE G={r.group} W={r.window}" if r.group > 1 else "no SE"
            ax.plot(xs, ys, marker=".", label=label if r is self and label else
                    f"n_ctx {r.n_ctx}, {se}, ppl {r.ppl:.2f}")
        ax.axvline(self.n_ctx_train, color="gray", linestyle="--", linewidth=1)
        ax.text(self.n_ctx_train, ax.get_ylim()[1], " trained context", va="top", fontsize=8, color="gray")
        ax.set_xlabel("position in window (tokens)")
        ax.set_ylabel(f"mean NLL per token (buckets of {self.bucket})")
        ax.set_title(f"{self.model} on {self.source}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def run_perplexity(llm_or_path=None, text: Optional[str] = None, n_ctx: Optional[int] = None, *,
                   tokens: Optional[Sequence[int]] = None, source: Optional[str] = None,
                   max_windows: Optional[int] = None, bucket: Optional[int] = None, chunk: Optional[int] = None,
                   progress: Optional[Callable[[int, int], None]] = None, **llm_kwargs) -> PerplexityResult:
    """Perplexity of `text` (or pre-tokenized `tokens`, without BOS) in windows of n_ctx tokens.

    llm_or_path: a loaded LLM, a GGUF path or None (the default model); llm_kwargs (self_extend,
    n_threads, rope_scaling, ...) go to LLM() when loading. max_windows: score at most this many.
    bucket: positions per curve bucket (default n_ctx // 64). chunk: tokens per eval call (default the
    LLM's n_batch). progress(done_windows, total_windows) after each window."""
    import time

    if (text is None) == (tokens is None):
        raise ArgumentError("give exactly one of text= or tokens=")
    llm = open_llm(llm_or_path, n_ctx, llm_kwargs)
    n_ctx = llm.n_ctx
    if text is not None:
        ids = llm.tokenize(text, add_bos=False, special=False)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    else:
        ids = [int(t) for t in llm._ids(tokens)]
        digest = hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()
    bucket = max(1, n_ctx // 64) if bucket is None else bucket
    chunk = llm._n_batch if chunk is None else chunk
    for name, v in (("bucket", bucket), ("chunk", chunk)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ArgumentError(f"{name} must be a positive integer, got {v!r}")
    if max_windows is not None and (not isinstance(max_windows, int) or max_windows < 1):
        raise ArgumentError(f"max_windows must be a positive integer, got {max_windows!r}")
    bos = llm.tokenizer.bos_id if llm.tokenizer.add_bos else None
    span = n_ctx - (bos is not None)
    if span < 1:
        raise ArgumentError(f"n_ctx={n_ctx} leaves no room for text after BOS")
    n_windows = len(ids) // span
    if n_windows == 0:
        raise ArgumentError(f"the text has {len(ids)} tokens, fewer than one window of n_ctx={n_ctx} "
                            f"({span} text tokens): use a longer text or a smaller n_ctx")
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    n_buckets = -(-n_ctx // bucket)
    rope = llm.rope
    res = PerplexityResult(
        model=os.path.basename(llm.model_path), source=source or ("text" if text is not None else "tokens"),
        sha256=digest, n_text_tokens=len(ids), n_ctx=n_ctx, n_ctx_train=llm.desc.n_ctx_train, group=llm.group,
        window=llm.window, rope=dict(scaling_type=rope.scaling_type, scaling_factor=rope.scaling_factor,
                                     freq_base=rope.freq_base),
        device=llm.device, n_threads=llm.n_threads, bos=bos is not None, bucket=bucket,
        curve_sum=[0.0] * n_buckets, curve_count=[0] * n_buckets)
    pos_bucket = np.arange(n_ctx) // bucket
    t0 = time.perf_counter()
    for w in range(n_windows):
        win = ids[w * span:(w + 1) * span]
        win = np.asarray(([bos] if bos is not None else []) + win, dtype=np.int32)
        llm.reset()
        nll = np.empty(n_ctx - 1)  # nll[p - 1]: loss of predicting win[p], p = 1 .. n_ctx - 1
        for s in range(0, n_ctx, chunk):
            logits = llm.eval(win[s:s + chunk], all_logits=True)  # (rows, n_vocab): row r predicts win[s+r+1]
            rows = min(len(logits), n_ctx - 1 - s)
            if rows > 0:
                nll[s:s + rows] = chunk_nll(logits[:rows], win[s + 1:s + 1 + rows])
            del logits
        res.nll_sum += float(nll.sum())
        res.n_scored += len(nll)
        res.window_ppl.append(math.exp(float(nll.mean())))
        sums = np.bincount(pos_bucket[1:], weights=nll, minlength=n_buckets)
        counts = np.bincount(pos_bucket[1:], minlength=n_buckets)
        res.curve_sum = [a + float(b) for a, b in zip(res.curve_sum, sums)]
        res.curve_count = [a + int(b) for a, b in zip(res.curve_count, counts)]
        res.n_windows += 1
        if progress is not None:
            progress(w + 1, n_windows)
    res.seconds = time.perf_counter() - t0
    return res
