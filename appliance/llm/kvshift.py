"""Keeping a KV cache across a change in the middle of the prompt (the `shift` eviction mode).

With exact last-K, each turn one old tool result turns into the placeholder, so
the prompt changes far from its end and a prefix cache re-evaluates everything
after that point. A splice instead removes the old span's tokens from the
cache, evaluates the replacement, and shifts the cached tokens after it back
into place: each token of the exact view is evaluated once. It is approximate:
the shifted tokens were computed while the removed span was visible.

These are pure functions over token lists; the llama.cpp backend applies the
splices to its KV cache (appliance.llm.llamacpp).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Splice:
    """Replace `cached[start:start + removed]` by `inserted`; the cached tokens after it move by `shift`."""

    start: int
    removed: int
    inserted: tuple[int, ...]
    # Cached tokens right after the removed span that equal the wanted tokens there (the reuse it buys).
    kept: int

    @property
    def shift(self) -> int:
        return len(self.inserted) - self.removed

    @property
    def end(self) -> int:
        """Where the kept run ends, in the new positions."""
        return self.start + len(self.inserted) + self.kept


def common_prefix(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    """How many tokens from `start` on are equal in both (an index into both)."""
    n = start
    for x, y in zip(a[start:], b[start:], strict=False):
        if x != y:
            break
        n += 1
    return n - start


def _next_boundary(tokens: Sequence[int], start: int, is_boundary: Callable[[int], bool]) -> int | None:
    for i in range(start, len(tokens)):
        if is_boundary(tokens[i]):
            return i
    return None


def plan_splice(cached: Sequence[int], wanted: Sequence[int], is_boundary: Callable[[int], bool]) -> Splice | None:
    """The splice that turns the first difference of `cached` into `wanted`'s, or None when none pays.

    The changed span runs from the first difference to the next message boundary
    (a control token such as `<|im_end|>`) in each sequence. A splice is planned
    only when it shrinks the span (a result leaving the window) and the cached
    tokens after it that can be kept outnumber the tokens to evaluate in its place;
    otherwise the backend evaluates from the difference on, as a prefix cache does.
    """
    start = common_prefix(cached, wanted)
    if start >= len(cached) or start >= len(wanted):
        return None
    cached_end = _next_boundary(cached, start, is_boundary)
    wanted_end = _next_boundary(wanted, start, is_boundary)
    if cached_end is None or wanted_end is None:
        return None
    removed = cached_end - start
    inserted = tuple(wanted[start:wanted_end])
    if len(inserted) >= removed:
        return None
    kept = 0
    for x, y in zip(cached[cached_end:], wanted[wanted_end:], strict=False):
        if x != y:
            break
        kept += 1
    if kept <= len(inserted):
        return None
    return Splice(start, removed, inserted, kept)


def apply_splice(cached: Sequence[int], splice: Splice) -> list[int]:
    """The token record after `splice`: what the cache holds, in order of position."""
    return [*cached[: splice.start], *splice.inserted, *cached[splice.start + splice.removed :]]


def plan_splices(
    cached: Sequence[int], wanted: Sequence[int], is_boundary: Callable[[int], bool], limit: int = 64
) -> list[Splice]:
    """Every splice, left to right, each planned on the record the previous ones leave."""
    splices: list[Splice] = []
    record = list(cached)
    while len(splices) < limit:
        splice = plan_splice(record, wanted, is_boundary)
        if splice is None:
            break
        splices.append(splice)
        record = apply_splice(record, splice)
    return splices
