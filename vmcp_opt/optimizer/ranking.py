"""Query preprocessing and score fusion: pure functions, no I/O, no model.

The index gives each arm's candidates as a `Ranking` (document position -> raw score); these functions turn
a request into the queries to run and the arms' candidates into one ordered list. Every knob comes from
`OptimizerConfig`, so `vmcp eval` can tune them and the gateway serves exactly what was measured.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.documents import split_identifier

# Document position in the index -> score (higher is better).
Ranking = dict[int, float]

# Where one request holds several needs: sentence ends, semicolons, new lines, "and then", "then", "also".
# Matched on text whose whitespace runs are at most two characters (`_one_space`), and a run of sentence-end
# marks only from its first: otherwise the leading `\s*` and the alternatives' `\s+` split one long run of
# spaces every way there is, at every position in it (a find_tool query of a word, 4,000 spaces and a word
# held the GIL, so the whole gateway, for minutes).
_INTENT_BOUNDARY = re.compile(
    r"\s*(?:[;\n]+|(?<![.?!])[.?!]+(?:\s+|$)|,?\s+and\s+then\s+|,?\s+and\s+also\s+|,\s*then\s+"
    r"|,?\s+after\s+that,?\s+|,\s*also\s+)\s*",
    re.IGNORECASE,
)
_WHITESPACE_RUN = re.compile(r"\s+")
# A full stop that ends an abbreviation ends no sentence: "with Dr. Smith for tomorrow" was cut into "with Dr"
# and "Smith for tomorrow", the second ranked as a need of its own. Titles and "e.g." are always followed by
# more of their sentence; "Inc.", "etc.", "a.m." often end one ("for Apple Inc. Finally, ..."), so they hold
# only before a word that starts lower case or a non-letter; "No." only before a number. Each alternative is a
# literal and a one-character look-ahead (on text whose whitespace runs are short): no backtracking.
_ABBREVIATION = re.compile(
    r"\b(?:(?i:dr|mrs?|ms|prof|st|mt|vs|cf|approx|fig|e\.g|i\.e)\.(?=\s)"
    r"|(?i:inc|ltd|co|corp|jr|sr|etc|a\.m|p\.m|u\.s|u\.k)\.(?=\s[^\sA-Z])"
    r"|(?i:no)\.(?=\s\d))"
)
# Stands in for an abbreviation's dots while the request is split (a private-use character: never typed).
_HELD_DOT = "\ue000"
_IDENTIFIER = re.compile(r"\b\w*(?:[a-z][A-Z]|_|-)\w*(?:-\w+)*\b")


def split_intents(query: str, *, min_words: int = 2, max_intents: int = 4) -> list[str]:
    """The separate needs in a request, or `[query]` when it holds one.

    >>> split_intents("find the weather in Paris, then email it to Bob")
    ['find the weather in Paris', 'email it to Bob']
    """
    text = _ABBREVIATION.sub(_hold_dots, _WHITESPACE_RUN.sub(_one_space, query))
    parts = [part.strip(" ,.").replace(_HELD_DOT, ".") for part in _INTENT_BOUNDARY.split(text)]
    parts = [part for part in parts if len(part.split()) >= min_words]
    if len(parts) < 2:
        return [query.strip()]
    return parts[:max_intents]


def _hold_dots(abbreviation: re.Match[str]) -> str:
    """An abbreviation whose dots the sentence split cannot see."""
    return abbreviation.group().replace(".", _HELD_DOT)


def _one_space(run: re.Match[str]) -> str:
    """A run of whitespace at most two characters long that splits as the run did: its new line (a boundary),
    then a space when the run went on after it (a connective after that, "and then", is part of the boundary)."""
    text = run.group()
    if text.endswith("\n"):
        return "\n"
    return "\n " if "\n" in text else " "


def query_variants(query: str, config: OptimizerConfig) -> list[str]:
    """The queries to run for one request: the request itself, then each intent when it holds several."""
    query = query.strip()
    if not config.split_intents:
        return [query]
    intents = split_intents(query, max_intents=config.max_intents)
    return [query] if intents == [query] else [query, *intents]


def intent_mean(vectors: np.ndarray, intents: Sequence[str]) -> np.ndarray:
    """A request's vector from its intents' unit `vectors`: their mean weighted by each intent's words (a
    mean-pooled vector of a whole text is its tokens' mean; words stand in for tokens), renormalised."""
    weights = np.array([max(len(intent.split()), 1) for intent in intents], dtype=np.float32)
    mean: np.ndarray = weights @ vectors
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


def keyword_query(query: str) -> str:
    """The query for the keyword arm: identifiers in it also appear split into words, like documents."""
    extra = [" ".join(split_identifier(match)) for match in _IDENTIFIER.findall(query)]
    return " ".join([query, *extra]) if extra else query


def minmax(ranking: Ranking) -> Ranking:
    """Scale scores to [0, 1]; a single or all-equal set maps to 1.0 (0.0 when every score is <= 0)."""
    if not ranking:
        return {}
    low, high = min(ranking.values()), max(ranking.values())
    if high - low <= 1e-12:
        value = 1.0 if high > 0 else 0.0
        return dict.fromkeys(ranking, value)
    span = high - low
    return {doc: (score - low) / span for doc, score in ranking.items()}


def scale_to_best(ranking: Ranking) -> Ranking:
    """Scores divided by the best one (top = 1.0; 0.0 for all when the best is <= 0).

    Unlike min-max, a candidate at 80 % of the best keeps 0.8 even when it is an arm's last: in a small
    catalogue min-max put the second of two keyword matches at 0 however close it came.
    """
    if not ranking:
        return {}
    high = max(ranking.values())
    return {doc: (score / high if high > 0 else 0.0) for doc, score in ranking.items()}


def fuse_weighted(
    dense: Ranking, sparse: Ranking, dense_weight: float, scaling: Literal["max", "minmax"] = "max"
) -> Ranking:
    """Weighted sum of each arm's scores scaled to [0, 1] (`scaling`: "max" or "minmax"); a document missing
    from an arm scores 0 there."""
    scale = scale_to_best if scaling == "max" else minmax
    dense_n, sparse_n = scale(dense), scale(sparse)
    keyword_weight = 1.0 - dense_weight
    return {
        doc: dense_weight * dense_n.get(doc, 0.0) + keyword_weight * sparse_n.get(doc, 0.0)
        for doc in dense_n.keys() | sparse_n.keys()
    }


def fuse_rrf(dense: Ranking, sparse: Ranking, k: int, dense_weight: float = 0.5) -> Ranking:
    """Reciprocal rank fusion; weights are scaled so dense_weight 0.5 is plain RRF."""
    fused: Ranking = {}
    for ranking, weight in ((dense, 2.0 * dense_weight), (sparse, 2.0 * (1.0 - dense_weight))):
        for rank, doc in enumerate(order(ranking), start=1):
            fused[doc] = fused.get(doc, 0.0) + weight / (k + rank)
    return fused


def fuse(dense: Ranking, sparse: Ranking, config: OptimizerConfig) -> Ranking:
    """The configured fusion of the vector arm and the keyword arm."""
    if config.fusion == "rrf":
        return fuse_rrf(dense, sparse, config.rrf_k, config.dense_weight)
    return fuse_weighted(dense, sparse, config.dense_weight, config.fusion_scaling)


def keyword_only(sparse: Ranking) -> Ranking:
    """Scores while vectors are not ready: the keyword arm alone, relative to the best (top = 1.0)."""
    return scale_to_best(sparse)


def merge_variants(rankings: Iterable[Ranking]) -> Ranking:
    """One ranking from those of several query variants: each document keeps its best score."""
    merged: Ranking = {}
    for ranking in rankings:
        for doc, score in ranking.items():
            if score > merged.get(doc, float("-inf")):
                merged[doc] = score
    return merged


def order(ranking: Ranking) -> list[int]:
    """Documents best first; ties broken by position so results are deterministic."""
    return sorted(ranking, key=lambda doc: (-ranking[doc], doc))


def head(ranking: Ranking, count: int) -> list[int]:
    """`order(ranking)[:count]` without sorting every candidate (a search needs the first few)."""
    if len(ranking) <= count:
        return order(ranking)
    # Every document scoring at least the `count`-th best score (a sort of plain floats), then their order.
    cut = sorted(ranking.values(), reverse=True)[count - 1]
    few = [doc for doc, score in ranking.items() if score >= cut]
    few.sort(key=lambda doc: (-ranking[doc], doc))
    return few[:count]


def top(ranking: Ranking, limit: int) -> list[tuple[int, float]]:
    """The best `limit` (document, score) pairs."""
    return [(doc, ranking[doc]) for doc in head(ranking, limit)]
