"""Choosing SelfExtend's group size G and neighbor window W.

SelfExtend keeps every position below the trained window L for sequences of up to
G * (L - W + floor(W/G)) tokens (positions.h). The rule for `self_extend="auto"`:

* n_ctx <= L: SelfExtend off (G = 1): the model runs inside its trained window.
* otherwise W = L // 8 (1024 for an 8k model; the LongLM paper uses windows of 512-2048, and keeping W
  small leaves room for the grouped range), and G = one more than the smallest group whose extended
  context covers n_ctx. ../shared/ANCHORS.md's sweep on SmolLM2 (exact SE, W = 1024) found that a G just
  above the covering minimum beats a large G (G = 4: 10/10 at 24k; G = 8: 7/10). Our 50-trial passkey
  cells on an H200 (docs/long_context.md, same keys and depths in every cell of a length) agree: the
  minimum + 1 found 49/45/45 of 50 keys at 16k/24k/32k against the minimum's 49/43/40, and on those
  150 paired trials it alone found 8 keys, the minimum alone 1 (exact McNemar p = 0.04); + 2 was
  worse at 32k (G = 7: 35/50), and W = 512 worse at 24k and 32k (G = 5: 26/50, G = 6: 38/50).
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


def auto(n_ctx_train: int, n_ctx: int) -> tuple[int, int]:
    """(group, window) for `self_extend="auto"`; group 1 means off."""
    if n_ctx <= n_ctx_train:
        return 1, max(1, n_ctx_train // 8)
    window = max(1, n_ctx_train // 8)
    for g in range(2, MAX_GROUP + 1):
        if max_context(n_ctx_train, g, window) >= n_ctx:
            return min(g + 1, MAX_GROUP), window  # one above the covering minimum: see the docstring
    raise ContextOverflowError(
        f"n_ctx={n_ctx} is beyond what SelfExtend reaches from a trained context of {n_ctx_train} "
        f"(G={MAX_GROUP}, W={window} gives {max_context(n_ctx_train, MAX_GROUP, window)})"
    )
