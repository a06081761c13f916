"""Choosing SelfExtend's group size G and neighbor window W.

SelfExtend keeps every position below the trained window L for sequences of up to
G * (L - W + floor(W/G)) tokens (positions.h). The rule for `self_extend="auto"`:

* n_ctx <= L: SelfExtend off (G = 1): the model runs inside its trained window.
* otherwise W = L // 8 (1024 for an 8k model; the LongLM paper uses windows of 512-2048) and G = the
  smallest group whose grouped range spans at most L // 4 positions: the farthest pair (query n_ctx - 1,
  key 0) sits at grouped distance (n_ctx - 1) // G + W - W // G (`grouped_span`), so every relative
  position the model sees stays in the first quarter of its trained window (G = 15 / 23 / 31 at 16k /
  24k / 32k for an 8k model). Why: in our 50-trial passkey cells on SmolLM2-135M (H200,
  docs/long_context.md) the rules that only cover n_ctx (the covering minimum, or one above it: 45/50
  at 24k and 32k) missed keys mostly at grouped distances above 2k (130 of 154 misses), while holding
  the whole context inside a 2k span (G = 24 at 24k, G = 32 at 32k, and this rule's 15 / 23 / 31 at
  16k / 24k / 32k) found 250 of 250. That relative positions near the trained length are the weakest
  is also what An et al. 2024 ("Why Does the Effective Context Length of LLMs Fall Short?", arXiv
  2410.18745) measure across models: the training data holds few long distances. L // 4 is measured
  on one model; an explicit (G, W) is there for others.
  Where even MAX_GROUP spans more than L // 4, auto takes MAX_GROUP if it still covers n_ctx.
* an explicit (G, W) that cannot cover n_ctx is refused, naming the smallest G that would (`validate`).
"""
from __future__ import annotations

from .errors import ArgumentError, ContextOverflowError

MAX_GROUP = 64


def max_context(n_ctx_train: int, group: int, window: int) -> int:
    """The longest sequence whose positions all stay below n_ctx_train: G * (L - W + floor(W/G))."""
    return group * (n_ctx_train - window + window // group)


def validate(group, window, n_ctx_train: int, n_ctx: int) -> tuple[int, int]:
    for name, v in (("group", group), ("window", window)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ArgumentError(f"SelfExtend {name} must be an integer, got {v!r}")
    if group < 1:
        raise ArgumentError(f"SelfExtend group (--grp-attn-n) must be >= 1, got {group}")
    if window < 1:
        raise ArgumentError(f"SelfExtend window (--grp-attn-w) must be >= 1, got {window}")
    if group == 1:
        if n_ctx > n_ctx_train:
            pass  # plain RoPE past the trained window: allowed (a user may want to see it fail)
        return 1, window
    if window >= n_ctx_train:
        raise ArgumentError(
            f"SelfExtend window {window} must be smaller than the model's trained context {n_ctx_train}"
        )
    limit = max_context(n_ctx_train, group, window)
    if n_ctx > limit:
        better = next((g for g in range(group, MAX_GROUP + 1) if max_context(n_ctx_train, g, window) >= n_ctx), None)
        hint = f"; G={better} covers it" if better else ""
        raise ContextOverflowError(
            f"n_ctx={n_ctx} exceeds what SelfExtend G={group}, W={window} keeps inside the trained context "
            f"{n_ctx_train}: at most G*(L-W+W//G) = {limit} tokens{hint}"
        )
    return group, window


def grouped_span(n_ctx: int, group: int, window: int) -> int:
    """The largest relative position SelfExtend gives any pair of an n_ctx-token sequence: the query at
    n_ctx - 1 against key 0, (n_ctx - 1) // G + W - W // G (n_ctx - 1 when that pair is a neighbor)."""
    if n_ctx - 1 < window or group <= 1:
        return max(0, n_ctx - 1)
    return (n_ctx - 1) // group + window - window // group


def auto(n_ctx_train: int, n_ctx: int) -> tuple[int, int]:
    """(group, window) for `self_extend="auto"`; group 1 means off."""
    window = max(1, n_ctx_train // 8)
    if n_ctx <= n_ctx_train:
        return 1, window
    span_cap = max(window, n_ctx_train // 4)
    for g in range(2, MAX_GROUP + 1):
        if grouped_span(n_ctx, g, window) <= span_cap:
            return g, window
    if max_context(n_ctx_train, MAX_GROUP, window) >= n_ctx:
        return MAX_GROUP, window  # the span exceeds L // 4, but every position stays inside L
    raise ContextOverflowError(
        f"n_ctx={n_ctx} is beyond what SelfExtend reaches from a trained context of {n_ctx_train} "
        f"(G={MAX_GROUP}, W={window} gives {max_context(n_ctx_train, MAX_GROUP, window)})"
    )
