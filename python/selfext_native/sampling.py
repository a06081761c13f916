"""Choosing the next token from the logits, and stopping on stop strings.

The chain is llama.cpp's default one, in its order:
    repeat penalty -> top-k -> top-p -> min-p -> temperature -> draw
so top-p and min-p look at the probabilities before temperature, and temperature 0 means greedy
(argmax after the penalty). NumPy only; one `np.random.Generator` per Sampler, so a seeded run repeats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from .errors import ArgumentError, ArrayTypeError


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x: object) -> bool:
    return (isinstance(x, (int, float, np.integer, np.floating))
            and not isinstance(x, (bool, np.bool_)) and math.isfinite(float(x)))


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. Defaults are llama.cpp's.

    temperature: >= 0; 0 is greedy. top_k: keep the k most likely tokens, 0 = all.
    top_p: keep the most likely tokens whose probabilities sum to at least top_p, in (0, 1].
    min_p: drop tokens less likely than min_p times the most likely one, in [0, 1].
    repeat_penalty: > 0, 1 = off; divides positive logits (multiplies negative ones) of tokens seen
    in the last repeat_last_n ids (0 = none, -1 = all). seed: None draws fresh entropy.
    max_tokens: None = until a stop. stop: strings that end the generation (not included in the text).
    """
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: Optional[int] = None
    max_tokens: Optional[int] = None
    stop: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ArgumentError:
            return ArgumentError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        if not _is_real(self.temperature) or self.temperature < 0:
            raise bad("temperature", "a finite number >= 0 (0 = greedy)")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0 (0 = off)")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "a number in (0, 1]")
        if not _is_real(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", "a number in [0, 1]")
        if not _is_real(self.repeat_penalty) or self.repeat_penalty <= 0:
            raise bad("repeat_penalty", "a number > 0 (1 = off)")
        if not _is_int(self.repeat_last_n) or self.repeat_last_n < -1:
            raise bad("repeat_last_n", "an integer >= -1 (0 = off, -1 = whole history)")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise bad("seed", "None or an integer >= 0")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise bad("max_tokens", "None or an integer >= 1")
        stop = self.stop
        if isinstance(stop, str):  # one stop string, as the OpenAI API allows
            stop = (stop,)
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise bad("stop", "a list of non-empty strings")
        object.__setattr__(self, "stop", tuple(stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """Draws token ids from logits under `params`; keeps its own seeded random generator."""

    def __init__(self, params: Optional[SamplingParams] = None):
        if params is None:
            params = SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ArgumentError(f"params must be a SamplingParams, got {type(params).__name__}")
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def reseed(self, seed: Optional[int]) -> None:
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise ArgumentError(f"seed must be None or an integer >= 0, got {seed!r}")
        self._rng = np.random.default_rng(seed)

    def _penalized(self, logits: np.ndarray, previous_ids: Optional[Sequence[int]]) -> np.ndarray:
        if logits.ndim != 1 or logits.size == 0:
            raise ArrayTypeError(f"logits must be a non-empty 1-D array (n_vocab,), got shape {logits.shape}")
        if logits.dtype.kind != "f":
            raise ArrayTypeError(f"logits must be a float array, got dtype {logits.dtype}")
        if np.isnan(logits).any() or np.isposinf(logits).any():
            raise ArgumentError("logits contain NaN or +inf")
        if not np.isfinite(logits).any():
            raise ArgumentError("logits are all -inf: no token can be drawn")
        x = logits.astype(np.float64)  # a copy: the caller's buffer is never modified
        p = self.params
        n_last = p.repeat_last_n
        if p.repeat_penalty != 1.0 and n_last != 0 and previous_ids is not None and len(previous_ids):
            recent = np.asarray(previous_ids if n_last == -1 else previous_ids[-n_last:])
            if recent.dtype.kind not in "iu":
                raise ArgumentError(f"previous_ids must be integers, got dtype {recent.dtype}")
            if recent.min() < 0 or recent.max() >= x.size:
                raise ArgumentError(f"previous_ids has ids outside [0, {x.size})")
            seen = np.unique(recent)
            v = x[seen]
            # llama.cpp's rule: dividing a negative logit would make the token more likely.
            x[seen] = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
        return x

    def candidates(self, logits: np.ndarray, previous_ids: Optional[Sequence[int]] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probabilities) left after the chain, probabilities summing to 1 (float64).
        Exposed so that tests and callers can inspect the distribution a draw comes from."""
        x = self._penalized(np.asarray(logits), previous_ids)
        p = self.params
        if p.greedy:
            return np.array([int(np.argmax(x))]), np.ones(1)

        n = x.size
        if 0 < p.top_k < n:
            # argpartition is O(n); only the k survivors get sorted.
            ids = np.argpartition(-x, p.top_k - 1)[:p.top_k]
            ids = ids[np.argsort(-x[ids], kind="stable")]
        elif p.top_p < 1.0:
            ids = np.argsort(-x, kind="stable")
        else:
            ids = np.arange(n)  # no step below needs an order
        z = x[ids]
        zmax = z.max()

        if p.top_p < 1.0:
            prob = np.exp(z - zmax)
            cum = np.cumsum(prob / prob.sum())
            # Keep the shortest prefix reaching top_p: the token that crosses it stays.
            keep = min(int(np.searchsorted(cum, p.top_p, side="left")) + 1, ids.size)
            ids, z = ids[:keep], z[:keep]

        if p.min_p > 0.0:
            # p_i >= min_p * p_max  <=>  logit_i >= max_logit + log(min_p)
            mask = z >= zmax + math.log(p.min_p)
            ids, z = ids[mask], z[mask]

        z = (z - zmax) / p.temperature
        prob = np.exp(z)
        return ids, prob / prob.sum()

    def sample(self, logits: np.ndarray, previous_ids: Optional[Sequence[int]] = None) -> int:
        """The next token id. logits: (n_vocab,) float array of the last position, not modified.
        previous_ids: the ids so far (prompt and generated), for the repeat penalty."""
        ids, prob = self.candidates(logits, previous_ids)
        if ids.size == 1:
            return int(ids[0])
        u = self._rng.random()
        k = int(np.searchsorted(np.cumsum(prob), u, side="right"))
        return int(ids[min(k, ids.size - 1)])  # min(): cumsum may end a hair below 1


class StopMatcher:
    """Finds stop strings in streamed text, across piece boundaries.

    push(piece) returns the text that is safe to show: text that might still become the start of a
    stop string is held back until the next pieces decide. Once a stop string is found, `stopped` is
    True, `stop` names it, and everything from it on is dropped.
    """

    def __init__(self, stop: Union[str, Sequence[str]] = ()):
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        if not all(isinstance(s, str) and s for s in stops):
            raise ArgumentError(f"stop must be non-empty strings, got {stop!r}")
        self._stops = stops
        self._held = ""
        self.stopped = False
        self.stop: Optional[str] = None

    def push(self, piece: str) -> str:
        if not isinstance(piece, str):
            raise ArgumentError(f"piece must be a str, got {type(piece).__name__}")
        if self.stopped:
            return ""
        buf = self._held + piece
        hit = self._earliest_hit(buf)
        # The earliest place where a stop string may have begun but not yet ended: a tail of buf
        # that is a proper prefix of a stop string. Text from there on is held for the next pieces.
        longest = max(len(s) for s in self._stops) if self._stops else 0
        pending = next((j for j in range(max(0, len(buf) - longest + 1), len(buf))
                        if any(len(s) > len(buf) - j and s.startswith(buf[j:]) for s in self._stops)),
                       len(buf))
        if hit is not None and hit[0] <= pending:
            # No longer stop string can still begin before this one: it is the first.
            i, s = hit
            self.stopped, self.stop, self._held = True, s, ""
            return buf[:i]
        self._held = buf[pending:]
        return buf[:pending]

    def _earliest_hit(self, buf: str) -> Optional[tuple[int, str]]:
        hits = [(buf.find(s), s) for s in self._stops]
        return min(((i, s) for i, s in hits if i >= 0), default=None)

    def flush(self) -> str:
        """At the end of the generation: the held text (it never became a stop string)."""
        out, self._held = self._held, ""
        if self.stopped:
            return ""
        hit = self._earliest_hit(out)  # a stop string completed while a longer one was pending
        if hit is not None:
            self.stopped, self.stop = True, hit[1]
            return out[:hit[0]]
        return out
