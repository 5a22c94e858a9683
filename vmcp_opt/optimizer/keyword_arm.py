"""The keyword arm: BM25 (bm25s) over tool documents, English stopwords and Snowball stemming.

Built once per index snapshot from the documents of `optimizer/documents.py`; a search scores one query
against every document in a few array operations and keeps the best `depth` positive scores.

Documents are tokenized by `bm25s.tokenize`; a query by `query_tokens`, the same steps (lower case, the
same pattern, stopwords, stemmer) without bm25s's per-call progress bars and vocabulary building, which
cost more than the scoring itself on a short query. Scores add each query token's precomputed column in
query order, as `BM25.get_scores_from_ids` does, so they are the same float32 values.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import ranking

_STOPWORDS = "en"
_STOPWORD_SET = frozenset(STOPWORDS_EN)
# bm25s.tokenize's default pattern (scikit-learn's CountVectorizer): words of two characters or more.
_WORDS = re.compile(r"(?u)\b\w\w+\b")
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
    vocab: dict[str, int] = bm25.vocab_dict
    ids = [vocab[token] for token in query_tokens(ranking.keyword_query(query)) if token in vocab]
    if not ids:
        return {}
    scores = _scores(bm25, ids)
    if allowed is not None:
        scores = np.where(allowed, scores, 0.0)
    return _top_positive(scores, depth)


def query_tokens(text: str) -> list[str]:
    """`text`'s stemmed tokens in order, as `bm25s.tokenize(..., stopwords="en", stemmer=_stem)` gives them."""
    words = [word for word in _WORDS.findall(text.lower()) if word not in _STOPWORD_SET]
    return _stem(words) if words else []


def _scores(bm25: Any, ids: list[int]) -> np.ndarray:
    """Every document's score: each token's column added in query order (repeats count again).

    A column holds each document at most once, so a fancy-indexed `+=` equals bm25s's `np.add.at`."""
    matrix = bm25.scores
    data, indices, indptr = matrix["data"], matrix["indices"], matrix["indptr"]
    scores = np.zeros(matrix["num_docs"], dtype=np.dtype(bm25.dtype))
    for token in ids:
        start, end = indptr[token], indptr[token + 1]
        scores[indices[start:end]] += data[start:end]
    return scores


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
    """The best `depth` positive scores. Found among the positive ones alone (a query's words are in few
    documents) when that set is unique; when scores tie across the cut, the partition of every document
    picks, as it always did."""
    positive = np.flatnonzero(scores > 0)
    if len(positive) > depth:
        values = scores[positive]
        cut = -np.partition(-values, depth - 1)[depth - 1]
        kept = values >= cut
        if np.count_nonzero(kept) == depth:
            positive = positive[kept]
        else:
            part = np.argpartition(-scores, depth - 1)[:depth]
            positive = part[scores[part] > 0]
    return dict(zip(positive.tolist(), scores[positive].tolist(), strict=True))
