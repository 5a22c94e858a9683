"""Pseudo-relevance feedback: the fused ranking's first results refine the query, with no extra model call.

After fusion, each query variant's best `feedback_docs` results are taken as relevant and the two arms are
searched again:

- the vector arm with Rocchio's query, the query vector plus `feedback_dense` times the mean of those
  results' vectors (renormalised): one more vector search;
- the keyword arm with the query's own tokens plus the `feedback_terms` tokens that weigh most in those
  results (each token's BM25 weight in a result, summed over the results by their fused score: RM3's
  selection), added at `feedback_term_weight` times their weight relative to the heaviest.

Both arms are then fused as before. Off (`feedback_docs` 0, the default), nothing here runs.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import keyword_arm, ranking, vector_arm

# The last keyword index's rows (document -> its tokens' BM25 weights): transposed once per snapshot.
_rows_lock = threading.Lock()
_rows: tuple[Any, _Rows] | None = None


@dataclass(frozen=True)
class _Rows:
    """A keyword index's score matrix by document: row d's tokens are `indices[indptr[d]:indptr[d + 1]]`."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray


def enabled(config: OptimizerConfig) -> bool:
    return config.feedback_docs > 0 and (config.feedback_dense > 0 or config.feedback_terms > 0)


def refine(
    variants: Sequence[str],
    fused: Sequence[ranking.Ranking],
    arm_rankings: tuple[Sequence[ranking.Ranking], Sequence[ranking.Ranking]],
    query_vectors: np.ndarray,
    arms: tuple[Any, Any, np.ndarray, np.ndarray | None],
    depth: int,
    allowed: np.ndarray | None,
    config: OptimizerConfig,
) -> tuple[list[ranking.Ranking], list[ranking.Ranking]]:
    """Each variant's fused ranking (and keyword arm) after one round of feedback from its own top results.

    `arm_rankings` is each variant's (vector arm, keyword arm) before feedback; `arms` the snapshot's
    (keyword index, FAISS index, has_vector, stored vectors)."""
    bm25, faiss_index, has_vector, vectors = arms
    tops = [ranking.head(f, config.feedback_docs) for f in fused]
    dense, keyword = list(arm_rankings[0]), list(arm_rankings[1])
    if config.feedback_dense > 0:
        moved = np.stack(
            [
                rocchio(q, vectors, has_vector, top, config.feedback_dense) if vectors is not None else q
                for q, top in zip(query_vectors, tops, strict=True)
            ]
        )
        dense = vector_arm.candidates(faiss_index, has_vector, moved, depth, allowed, config, vectors)
    if config.feedback_terms > 0 and bm25 is not None:
        keyword = [
            expanded_keywords(bm25, text, top, f, depth, allowed, config)
            for text, top, f in zip(variants, tops, fused, strict=True)
        ]
    refused = [ranking.fuse(d, s, config) for d, s in zip(dense, keyword, strict=True)]
    return refused, keyword


def rocchio(query: np.ndarray, vectors: np.ndarray, has_vector: np.ndarray, top: list[int], beta: float) -> np.ndarray:
    """The query moved toward the mean of `top`'s vectors (those that have one), unit length again."""
    rows = [doc for doc in top if has_vector[doc]]
    if not rows:
        return query
    moved = query + beta * vectors[rows].mean(axis=0)
    norm = float(np.linalg.norm(moved))
    return (moved / norm).astype(np.float32) if norm > 0 else query


def expanded_keywords(
    bm25: Any,
    text: str,
    top: list[int],
    fused: ranking.Ranking,
    depth: int,
    allowed: np.ndarray | None,
    config: OptimizerConfig,
) -> ranking.Ranking:
    """The keyword arm for `text` plus the feedback terms of `top` (see the module's docstring)."""
    ids = keyword_arm.query_ids(bm25, text)
    weights: dict[int, float] = {token: float(count) for token, count in Counter(ids).items()}
    for token, weight in feedback_terms(bm25, top, fused, set(ids), config.feedback_terms).items():
        weights[token] = weights.get(token, 0.0) + config.feedback_term_weight * weight
    return keyword_arm.weighted_candidates(bm25, weights, depth, allowed) if weights else {}


def feedback_terms(
    bm25: Any, top: list[int], fused: ranking.Ranking, exclude: set[int], count: int
) -> dict[int, float]:
    """The `count` tokens weighing most in `top` (BM25 weight times the result's fused score), not in
    `exclude`, each as its weight relative to the heaviest (1.0)."""
    if not top:
        return {}
    rows = _document_rows(bm25)
    total: dict[int, float] = {}
    for doc in top:
        start, end = rows.indptr[doc], rows.indptr[doc + 1]
        for token, value in zip(rows.indices[start:end].tolist(), rows.data[start:end].tolist(), strict=True):
            if token not in exclude:
                total[token] = total.get(token, 0.0) + fused[doc] * value
    best = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:count]
    if not best or best[0][1] <= 0:
        return {}
    heaviest = best[0][1]
    return {token: weight / heaviest for token, weight in best if weight > 0}


def _document_rows(bm25: Any) -> _Rows:
    """The keyword index's score columns (one per token) as rows (one per document), built once per index."""
    global _rows
    cached = _rows
    if cached is not None and cached[0] is bm25:
        return cached[1]
    matrix = bm25.scores
    indptr, documents = np.asarray(matrix["indptr"]), np.asarray(matrix["indices"])
    tokens = np.repeat(np.arange(len(indptr) - 1, dtype=np.int32), np.diff(indptr))
    by_document = np.argsort(documents, kind="stable")
    row_ptr = np.zeros(matrix["num_docs"] + 1, dtype=np.int64)
    np.cumsum(np.bincount(documents, minlength=matrix["num_docs"]), out=row_ptr[1:])
    rows = _Rows(row_ptr, tokens[by_document], np.asarray(matrix["data"])[by_document])
    with _rows_lock:
        _rows = (bm25, rows)
    return rows
