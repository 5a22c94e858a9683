"""The search path's fast parts agree with what they replace: bm25s's own query tokenization and scoring,
FAISS's flat search (filtered or not, one query or several), and a full sort of a ranking.

bench/search_equality.py checks the same end to end on the eval sets' queries; these run without the model.
"""

from __future__ import annotations

import random

import bm25s
import numpy as np
import pytest

from tests.test_optimizer_index import CATALOGUE
from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import keyword_arm, ranking, vector_arm
from vmcp_opt.optimizer.documents import tool_document

QUERIES = [
    "what time is it in Tokyo",
    "Read the file README.md, then commit it to git and also fetch https://example.com",
    "getCurrentTime for Europe/London; convert_time to UTC",
    "the and of",  # stopwords only
    "",
    "Ünïcode wörds — dashes, x1 42 co-op",
    "read read read file",  # a repeated word counts again
]


def test_query_tokens_are_those_bm25s_tokenize_gives() -> None:
    texts = QUERIES + [tool_document(record) for record in CATALOGUE]
    for text in texts:
        expected = bm25s.tokenize(
            [text], stopwords="en", stemmer=keyword_arm._stem, return_ids=False, show_progress=False
        )
        assert keyword_arm.query_tokens(text) == expected[0]


@pytest.mark.parametrize("filtered", [False, True])
def test_keyword_candidates_match_bm25s_scores(filtered: bool) -> None:
    documents = [tool_document(record) for record in CATALOGUE] * 3  # ties between copies
    bm25 = keyword_arm.build(documents, OptimizerConfig())
    allowed = np.arange(len(documents)) % 2 == 0 if filtered else None
    for query in QUERIES:
        for depth in (1, 4, 100):
            tokens = bm25s.tokenize(
                [ranking.keyword_query(query)], stopwords="en", stemmer=keyword_arm._stem, return_ids=False
            )[0]
            ids = bm25.get_tokens_ids(tokens)
            scores = bm25.get_scores_from_ids(ids) if ids else np.zeros(len(documents), dtype=np.float32)
            if allowed is not None:
                scores = np.where(allowed, scores, 0.0)
            part = np.argpartition(-scores, min(depth, len(scores)) - 1)[:depth]
            expected = {int(i): float(scores[i]) for i in part if scores[i] > 0}
            assert keyword_arm.candidates(bm25, query, depth, allowed) == expected


@pytest.mark.parametrize("queries", [1, 3, 5])
@pytest.mark.parametrize("filtered", [False, True])
def test_flat_vector_candidates_match_faiss_search(queries: int, filtered: bool) -> None:
    rng = np.random.default_rng(queries)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    has_vector = rng.random(3000) > 0.05
    vectors[~has_vector] = 0.0  # rows without a vector are zero, as in a snapshot
    config = OptimizerConfig()
    index = vector_arm.build(vectors, config)
    view = vector_arm.stored_vectors(index, 3000, 32)
    allowed = rng.random(3000) > 0.5 if filtered else None
    query_vectors = rng.standard_normal((queries, 32)).astype(np.float32)
    for depth in (10, 100):
        by_faiss = vector_arm.candidates(index, has_vector, query_vectors, depth, allowed, config)
        direct = vector_arm.candidates(index, has_vector, query_vectors, depth, allowed, config, view)
        for expected, got in zip(by_faiss, direct, strict=True):
            assert got.keys() == expected.keys()
            assert all(abs(got[doc] - score) < 1e-6 for doc, score in expected.items())


def test_flat_vector_candidates_stop_at_the_allowed_rows() -> None:
    vectors = np.eye(8, dtype=np.float32)
    config = OptimizerConfig()
    index = vector_arm.build(vectors, config)
    view = vector_arm.stored_vectors(index, 8, 8)
    allowed = np.zeros(8, dtype=bool)
    allowed[[2, 5]] = True
    got = vector_arm.candidates(index, np.ones(8, dtype=bool), vectors[:1], 4, allowed, config, view)
    assert got == [{2: 0.0, 5: 0.0}]


def test_head_is_the_start_of_the_full_order() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        scores = [0.0, 0.5, 1.0, rng.random(), rng.random() * 1e-9]
        ranking_ = {rng.randrange(500): rng.choice(scores) for _ in range(rng.randrange(60))}
        count = rng.randrange(1, 12)
        assert ranking.head(ranking_, count) == ranking.order(ranking_)[:count]
