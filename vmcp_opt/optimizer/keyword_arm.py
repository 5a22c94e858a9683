"""The keyword arm: BM25 (bm25s) over tool documents, English stopwords and Snowball stemming.

Built once per index snapshot from the documents of `optimizer/documents.py`; a search scores one query
against every document in a few array operations and keeps the best `depth` positive scores.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import bm25s
import numpy as np
import Stemmer

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import ranking

_STOPWORDS = "en"
_stemmers = threading.local()


def build(documents: Sequence[str], config: OptimizerConfig) -> Any:
    """A BM25 index of `documents` (positions are document positions), or None when there are none."""
    if not documents:
        return None
    bm25 = bm25s.BM25(k1=config.bm25_k1, b=config.bm25_b)
    bm25.index(_tokenize(list(documents)), show_progress=False)
    return bm25


def candidates(bm25: Any, query: str, depth: int, allowed: np.ndarray | None) -> ranking.Ranking:
    """The best `depth` documents with a positive score, among those `allowed` (all when None)."""
    tokens = _tokenize([ranking.keyword_query(query)], return_ids=False)[0]
    ids = bm25.get_tokens_ids(tokens)
    if not ids:
        return {}
    scores = bm25.get_scores_from_ids(ids)
    if allowed is not None:
        scores = np.where(allowed, scores, 0.0)
    return _top_positive(scores, depth)


def _stem(words: list[str]) -> list[str]:
    # PyStemmer objects are not thread-safe: one per thread.
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:
        stemmer = _stemmers.english = Stemmer.Stemmer("english")
    result: list[str] = stemmer.stemWords(words)
    return result


def _tokenize(texts: list[str], *, return_ids: bool = True) -> Any:
    return bm25s.tokenize(texts, stopwords=_STOPWORDS, stemmer=_stem, return_ids=return_ids, show_progress=False)


def _top_positive(scores: np.ndarray, depth: int) -> ranking.Ranking:
    depth = min(depth, len(scores))
    part = np.argpartition(-scores, depth - 1)[:depth]
    return {int(i): float(scores[i]) for i in part if scores[i] > 0}
