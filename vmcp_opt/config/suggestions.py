"""The known name a misspelt one was meant to be, for "did you mean" hints (config keys, sections, audit event
types, pinned tools).

Two measures, because each misses what the other sees: difflib's likeness ratio finds a long name with a few
slips (`optimiser`: `optimizer`), but scores a slip in a short name low (`ulr` against `url`, `evn` against `env`: 0.67); an edit distance counting a transposition as one
edit (optimal string alignment, a restricted Damerau-Levenshtein) finds those, and is allowed only one edit on
short names and two on longer ones, so an unrelated word (`banana`) is never "meant" as a key.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Edits a name of this many characters or fewer may be from the one meant; longer names may be two edits off.
SHORT_NAME = 5
# Names of this length or shorter get no edit allowance (`id` is one edit from any two-letter word).
TINY_NAME = 2


def typo_allowance(word: str, known: str) -> int:
    """Edits `word` may be from `known` and still be a slip of it: by the shorter of the two."""
    shorter = min(len(word), len(known))
    if shorter <= TINY_NAME:
        return 0
    return 1 if shorter <= SHORT_NAME else 2


def edit_distance(a: str, b: str, limit: int) -> int:
    """Insertions, deletions, substitutions and swaps of two neighbours turning `a` into `b`, or `limit + 1`
    when more than `limit`. Only cells within `limit` of the diagonal are computed (the rest exceed it), so
    checking a name against ten thousand tool names stays cheap."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    over = limit + 1
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [over] * (len(b) + 1)
        current[0] = i
        for j in range(max(1, i - limit), min(len(b), i + limit) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            best = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                best = min(best, before[j - 2] + 1)
            current[j] = min(best, over)
        if min(current) > limit and min(previous) > limit:  # a swap reaches back two rows
            return over
        before, previous = previous, current
    return min(previous[len(b)], over)


def closest(word: str, known: Iterable[str], *, cutoff: float = 0.75, most: int = 1) -> list[str]:
    """The names of `known` that `word` was likely meant to be, closest first: a slip away (`typo_allowance`)
    or alike by difflib's ratio (at least `cutoff`). Fewest edits rank first, then likeness. With `most` > 1,
    only those about as close as the best: a typo match keeps the others at its distance, a likeness match
    those within 0.1 of its ratio (names sharing a prefix, as one backend's tools do, all look alike)."""
    scored: list[tuple[int, float, str]] = []
    for name in set(known):
        allowance = typo_allowance(word, name)
        edits = edit_distance(word, name, allowance)
        ratio = difflib.SequenceMatcher(None, word, name).ratio()
        if edits <= allowance or ratio >= cutoff:
            scored.append((edits, -ratio, name))
    if not scored:
        return []
    scored.sort()
    best_edits, best_ratio = scored[0][0], -scored[0][1]
    typo = best_edits <= typo_allowance(word, scored[0][2])
    near = [name for edits, minus, name in scored if (edits == best_edits if typo else -minus >= best_ratio - 0.1)]
    return near[:most]
