"""Retrieval metrics over one ranked list per query; `relevant` maps a tool id to its graded relevance.

Definitions (all per query, averaged over queries by the harness):
- Recall@k: relevant tools in the top k / all relevant tools.
- nDCG@k: DCG with gain = relevance and discount log2(rank + 1), over the ideal DCG of the same k.
- MRR@k: 1 / rank of the first relevant tool within the top k, else 0.
- COMP@k (completeness, from COLT): 1 if every relevant tool is in the top k, else 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    wanted = {doc for doc, rel in relevant.items() if rel > 0}
    if not wanted:
        return 0.0
    return len(wanted.intersection(ranked[:k])) / len(wanted)


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal_gains = sorted((rel for rel in relevant.values() if rel > 0), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal_gains))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    for rank, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (rank + 1)
    return 0.0


def comp_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    wanted = {doc for doc, rel in relevant.items() if rel > 0}
    return 1.0 if wanted and wanted.issubset(ranked[:k]) else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in 0..100; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def evaluate(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    ks: Sequence[int],
    rankings_at: Mapping[int, Mapping[str, Sequence[str]]] | None = None,
) -> dict[str, float]:
    """Mean of every metric over the judged queries; values in 0..1.

    `rankings_at[k]`, when given, is the ranking to score at cut-off k (for methods whose list of size k
    is not a prefix of their longer list, such as the ToolHive baseline's slot split).
    """
    cutoffs = sorted(set(ks) | {5, 10})
    sums: dict[str, float] = {}
    queries = [qid for qid in qrels if qid in rankings]
    for qid in queries:
        relevant = qrels[qid]
        for k in cutoffs:
            ranked = (rankings_at or {}).get(k, rankings).get(qid, rankings[qid])
            for metric, fn in (("recall", recall_at_k), ("ndcg", ndcg_at_k), ("comp", comp_at_k)):
                key = f"{metric}@{k}"
                sums[key] = sums.get(key, 0.0) + fn(ranked, relevant, k)
        ranked10 = (rankings_at or {}).get(10, rankings).get(qid, rankings[qid])
        sums["mrr@10"] = sums.get("mrr@10", 0.0) + mrr_at_k(ranked10, relevant, 10)
    n = max(len(queries), 1)
    return {key: value / n for key, value in sums.items()}


def per_query_ndcg(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    k: int = 10,
    rankings_at: Mapping[int, Mapping[str, Sequence[str]]] | None = None,
) -> dict[str, float]:
    """nDCG@k of each judged query (what `evaluate` averages), for paired comparisons between methods."""
    at_k = (rankings_at or {}).get(k, rankings)
    return {qid: ndcg_at_k(at_k.get(qid, rankings[qid]), qrels[qid], k) for qid in qrels if qid in rankings}


def paired_bootstrap(
    ours: Sequence[float], theirs: Sequence[float], samples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of `ours - theirs` over the same queries and its 95 % percentile-bootstrap interval.

    Queries are resampled with replacement, the pairs kept together: the interval says how much of a
    gain on a set of this size could be the luck of which queries it holds.
    """
    import numpy as np

    diffs = np.asarray(ours, dtype=float) - np.asarray(theirs, dtype=float)
    if diffs.size == 0:
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(samples, diffs.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diffs.mean()), float(low), float(high)
