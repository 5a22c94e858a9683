"""Score boosts after fusion: tools raised for what the request's best results go with.

- Companions: tools that past tasks used together with the best results (optimizer/usage.py).
- Prerequisites: tools that issue a value one of the best results requires (optimizer/prerequisites.py).

Both read the request's own ranking (`merged`, the fused query variants), so neither feeds the other, and
both return, next to the boosted scores, why a tool was raised (`SearchHit.used_with`, `.supplies`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import ranking
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.prerequisites import Prerequisite, raised
from vmcp_opt.optimizer.usage import UsageGraph, companion_scores

# A tool raised for what a result needs scores this fraction of that result: just below it.
_BELOW = 0.999


def with_companions(
    merged: ranking.Ranking,
    records: Sequence[ToolRecord],
    positions: Mapping[str, int],
    usage: UsageGraph,
    config: OptimizerConfig,
    allowed: np.ndarray | None,
) -> tuple[ranking.Ranking, dict[int, str]]:
    """`merged` plus what co-usage with its best results adds (tools outside it may enter), and, for
    each tool that owes more of its score to co-usage than to the request, the result it came with.

    `positions` maps routable names to positions in `records` (the graph knows tools by name)."""
    seeds = config.usage_seeds
    seeded = [(records[doc].name, merged[doc]) for doc in ranking.head(merged, seeds)]
    boosted = dict(merged)
    used_with: dict[int, str] = {}
    for name, (extra, seed) in companion_scores(seeded, usage, seeds, config.usage_weight).items():
        doc = positions.get(name)
        if doc is None or (allowed is not None and not allowed[doc]):
            continue
        if extra > merged.get(doc, 0.0):
            used_with[doc] = seed
        boosted[doc] = boosted.get(doc, 0.0) + extra
    return boosted, used_with


def with_prerequisites(
    merged: ranking.Ranking,
    scored: ranking.Ranking,
    records: Sequence[ToolRecord],
    prerequisites: Mapping[int, Sequence[Prerequisite]],
    config: OptimizerConfig,
    allowed: np.ndarray | None,
) -> tuple[ranking.Ranking, dict[int, tuple[str, str]]]:
    """`scored` plus, for each tool issuing a value one of the best results requires, what co-usage with
    P = 1 would add, and what it supplies to which result.

    Only the strongest such result counts (a value is issued once), and the tool stays below it: the
    result the request asked for is never pushed out by what it needs."""
    weight = config.prerequisite_weight
    best: dict[int, tuple[float, float, int, str]] = {}  # issuer -> (extra, ceiling, result, argument)
    for rank, doc in enumerate(ranking.head(merged, config.usage_seeds), start=1):
        score = merged[doc]
        # Only the issuers this caller may use, and counted among them: `MAX_ISSUERS` after the policy.
        for needed in raised(prerequisites.get(doc, ()), allowed) if score > 0 else ():
            extra = weight * score / rank
            if extra > best.get(needed.issuer, (0.0,))[0]:
                best[needed.issuer] = (extra, score * _BELOW, doc, needed.argument)
    boosted = dict(scored)
    supplies: dict[int, tuple[str, str]] = {}
    for issuer, (extra, ceiling, doc, argument) in best.items():
        own = scored.get(issuer, 0.0)
        boosted[issuer] = max(own, min(own + extra, ceiling))
        supplies[issuer] = (records[doc].name, argument)
    return boosted, supplies
