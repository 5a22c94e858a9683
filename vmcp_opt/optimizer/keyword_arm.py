"""The keyword arm: BM25 (bm25s) over tool documents, English stopwords and Snowball stemming.

The stopwords are Lucene's 33 (bm25s' `STOPWORDS_EN`) and question words, pronouns and politeness
(`_QUESTION_WORDS`), on documents and queries alike. With Lucene's alone "what" was a term: found only in
`remember_with_time`'s document ("read back what is known"), its idf put that memory write first for "what time
is it". Words that carry a tool's meaning ("up", "off", "all", "before", "after") stay terms. Measured 2026-12-06
(eval/README.md "Stopwords", 300 queries a set, cold) against Lucene's alone, nDCG@10 in points: toollens +0.22,
apigen +0.03, apibank +0.12, gorilla-huggingface +0.02, toolink -0.06, mean +0.07; NLTK's 179
(`STOPWORDS_EN_PLUS`) cost apibank 0.37 and 3 points of Recall@5.

Built once per index snapshot from the documents of `optimizer/documents.py`; a search scores one query
against every document in a few array operations and keeps the best `depth` positive scores. With
`optimizer.parameter_share` set, `build_fields` builds the same columns itself from two fields, the
parameters' counts scaled by a weight chosen per catalogue (`parameter_weight_for_share`).

Documents are tokenized by `bm25s.tokenize`; a query by `query_tokens`, the same steps (lower case, the
same pattern, stopwords, stemmer) without bm25s's per-call progress bars and vocabulary building, which
cost more than the scoring itself on a short query. Scores add each query token's precomputed column in
query order, as `BM25.get_scores_from_ids` does, so they are the same float32 values.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import Stemmer

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import ranking

# Added to Lucene's list: a request's question form ("what", "how", "can you", "please") says nothing of the tool.
_WH_WORDS = ("what", "which", "who", "whom", "whose", "when", "where", "why", "how")
_PRONOUNS = ("i", "me", "my", "mine", "we", "our", "you", "your", "he", "she", "him", "her")
_POLITENESS = ("please", "can", "could", "would", "should", "do", "does", "did")
_QUESTION_WORDS = frozenset((*_WH_WORDS, *_PRONOUNS, *_POLITENESS))
# bm25s.tokenize's default pattern (scikit-learn's CountVectorizer): words of two characters or more.
_WORDS = re.compile(r"(?u)\b\w\w+\b")
_stemmers = threading.local()
# The parameter weight `parameter_weight_for_share` may choose: below, a catalogue's parameters would all but
# vanish from the keyword arm; above, they would drown the tool's name (the config's `parameter_weight` cap).
_SHARE_WEIGHT_BOUNDS = (0.25, 5.0)


def build(documents: Sequence[str], config: OptimizerConfig) -> Any:
    """A BM25 index of `documents` (positions are document positions), or None when there are none."""
    if not documents:
        return None
    import bm25s  # with scipy, 0.22 s of a gateway's start-up: only once there are tools to index

    tokens = _tokenize(list(documents))
    if not tokens.vocab:
        # Every document tokenised to nothing (a tool named `a`, no description): bm25s cannot index an empty
        # vocabulary, and no query token can match one anyway.
        return _empty_index(len(documents))
    bm25 = bm25s.BM25(k1=config.bm25_k1, b=config.bm25_b)
    bm25.index(tokens, show_progress=False)
    return bm25


def _empty_index(documents: int) -> _FieldIndex:
    """An index with no tokens: every query has no keyword hits (the vector arm still ranks)."""
    scores = {
        "data": np.zeros(0, dtype=np.float32),
        "indices": np.zeros(0, dtype=np.int32),
        "indptr": np.zeros(1, dtype=np.int32),
        "num_docs": documents,
    }
    return _FieldIndex(vocab_dict={}, scores=scores)


def build_fields(heads: Sequence[str], parameters: Sequence[str], weight: float, config: OptimizerConfig) -> Any:
    """A BM25 index of two-field documents (a head and its parameter lines, by position), the parameters'
    term frequencies and length counted `weight` times: BM25F's field weight, with `build`'s Lucene idf and
    saturation. At an integer weight it scores as `build` does on each head followed by its parameter lines
    repeated that many times; a fractional one is what repetition cannot say. None when there are no
    documents."""
    if not heads:
        return None
    head_tokens = _tokenize(list(heads), return_ids=False)
    parameter_tokens = _tokenize(list(parameters), return_ids=False)
    vocab: dict[str, int] = {}
    frequencies: list[dict[int, float]] = []
    lengths = np.zeros(len(heads))
    for position, (head, params) in enumerate(zip(head_tokens, parameter_tokens, strict=True)):
        tf: dict[int, float] = {}
        for token in head:
            key = vocab.setdefault(token, len(vocab))
            tf[key] = tf.get(key, 0.0) + 1.0
        if weight > 0:
            for token in params:
                key = vocab.setdefault(token, len(vocab))
                tf[key] = tf.get(key, 0.0) + weight
        lengths[position] = len(head) + (weight * len(params) if weight > 0 else 0)
        frequencies.append(tf)
    documents = len(heads)
    doc_freq = np.zeros(len(vocab))
    for tf in frequencies:
        doc_freq[list(tf)] += 1
    idf = np.log(1 + (documents - doc_freq + 0.5) / (doc_freq + 0.5))
    average = float(lengths.mean()) or 1.0
    k1, b = config.bm25_k1, config.bm25_b
    rows: list[int] = []
    columns: list[int] = []
    values: list[float] = []
    for position, tf in enumerate(frequencies):
        norm = k1 * ((1 - b) + b * lengths[position] / average)
        for key, count in tf.items():
            rows.append(position)
            columns.append(key)
            values.append(float(idf[key]) * count / (norm + count))
    # Compressed columns (one per token, documents ascending), the layout bm25s keeps and `_scores` reads.
    row, column = np.array(rows, dtype=np.int32), np.array(columns, dtype=np.int32)
    order = np.lexsort((row, column))
    indptr = np.zeros(len(vocab) + 1, dtype=np.int32)
    np.cumsum(np.bincount(column, minlength=len(vocab)), out=indptr[1:])
    data = np.array(values, dtype=np.float32)[order]
    scores = {"data": data, "indices": row[order], "indptr": indptr, "num_docs": documents}
    return _FieldIndex(vocab_dict=vocab, scores=scores)


def parameter_weight_for_share(
    heads: Sequence[str],
    parameters: Sequence[str],
    share: float,
    *,
    names_in_head: bool = False,
    cap: float = _SHARE_WEIGHT_BOUNDS[1],
) -> float:
    """The weight at which the parameters make `share` of the catalogue's keyword tokens (stopwords out,
    stemmed, as indexed): w·P / (H + w·P) = share, within `_SHARE_WEIGHT_BOUNDS` (at most `cap`); 1 for a
    catalogue with no parameter (or only parameters), where the weight changes nothing worth choosing.

    `names_in_head` counts a head token that is one of its tool's parameter names as a parameter token: a
    description that names its arguments ("takes two arguments, 'liters' and 'percentage'") or a docstring's
    `Args:` block already carries them, so such a catalogue is not weighed up for parameters it states."""
    head_tokens = _tokenize(list(heads), return_ids=False) if heads else []
    parameter_tokens = _tokenize(list(parameters), return_ids=False) if parameters else []
    head = sum(len(tokens) for tokens in head_tokens)
    params = sum(len(tokens) for tokens in parameter_tokens)
    if names_in_head and head_tokens:
        named = sum(_named_in_head(tokens, lines) for tokens, lines in zip(head_tokens, parameters, strict=True))
        head, params = head - named, params + named
    if not head or not params:
        return 1.0
    low, high = _SHARE_WEIGHT_BOUNDS
    return min(high, cap, max(low, share * head / ((1 - share) * params)))


def _named_in_head(head_tokens: Sequence[str], parameter_lines: str) -> int:
    """How many of a head's tokens are its tool's parameter names (the words before each line's colon)."""
    names = {word for line in parameter_lines.splitlines() for word in query_tokens(line.split(":", 1)[0])}
    return sum(1 for token in head_tokens if token in names)


@dataclass(frozen=True)
class _FieldIndex:
    """What `candidates` reads of a bm25s index: the token ids and the per-token score columns (CSC)."""

    vocab_dict: dict[str, int]
    scores: dict[str, Any]
    dtype: str = "float32"


def candidates(bm25: Any, query: str, depth: int, allowed: np.ndarray | None) -> ranking.Ranking:
    """The best `depth` documents with a positive score, among those `allowed` (all when None)."""
    ids = query_ids(bm25, query)
    return _ranked(_scores(bm25, ids), depth, allowed) if ids else {}


def query_ids(bm25: Any, query: str) -> list[int]:
    """The index's token ids of `query`'s tokens, in order and repeated as they are (unknown ones dropped)."""
    vocab: dict[str, int] = bm25.vocab_dict
    return [vocab[token] for token in query_tokens(ranking.keyword_query(query)) if token in vocab]


def weighted_candidates(
    bm25: Any, weights: dict[int, float], depth: int, allowed: np.ndarray | None
) -> ranking.Ranking:
    """`candidates` for a weighted bag of token ids (pseudo-relevance feedback's expanded query)."""
    return _ranked(_scores(bm25, list(weights), list(weights.values())), depth, allowed)


def _ranked(scores: np.ndarray, depth: int, allowed: np.ndarray | None) -> ranking.Ranking:
    if allowed is not None:
        scores = np.where(allowed, scores, 0.0)
    return _top_positive(scores, depth)


def query_tokens(text: str) -> list[str]:
    """`text`'s stemmed tokens in order, as `_tokenize` (`bm25s.tokenize`, the same stopwords) gives them."""
    stopwords = _stopword_set()
    words = [word for word in _WORDS.findall(text.lower()) if word not in stopwords]
    return _stem(words) if words else []


def _scores(bm25: Any, ids: list[int], weights: Sequence[float] | None = None) -> np.ndarray:
    """Every document's score: each token's column added in query order (repeats count again), times its
    weight when `weights` gives one per id.

    A column holds each document at most once, so a fancy-indexed `+=` equals bm25s's `np.add.at`."""
    matrix = bm25.scores
    data, indices, indptr = matrix["data"], matrix["indices"], matrix["indptr"]
    scores = np.zeros(matrix["num_docs"], dtype=np.dtype(bm25.dtype))
    for i, token in enumerate(ids):
        start, end = indptr[token], indptr[token + 1]
        column = data[start:end]
        scores[indices[start:end]] += column if weights is None else np.float32(weights[i]) * column
    return scores


def _stem(words: list[str]) -> list[str]:
    # PyStemmer objects are not thread-safe: one per thread.
    stemmer = getattr(_stemmers, "english", None)
    if stemmer is None:
        stemmer = _stemmers.english = Stemmer.Stemmer("english")
    result: list[str] = stemmer.stemWords(words)
    return result


@cache
def _stopword_set() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN) | _QUESTION_WORDS


def _tokenize(texts: list[str], *, return_ids: bool = True) -> Any:
    import bm25s

    return bm25s.tokenize(
        texts, stopwords=list(_stopword_set()), stemmer=_stem, return_ids=return_ids, show_progress=False
    )


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
