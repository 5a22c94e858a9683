"""The search path's fast parts agree with what they replace: bm25s's own query tokenization and scoring,
FAISS's flat search (filtered or not, one query or several), and a full sort of a ranking.

bench/search_equality.py checks the same end to end on the eval sets' queries; these run without the model.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bm25s
import numpy as np
import pytest

from tests.test_optimizer_index import CATALOGUE
from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import keyword_arm, ranking, vector_arm
from vmcp_opt.optimizer.documents import tool_document
from vmcp_opt.optimizer.embedding import TextEmbedder, load_embedder
from vmcp_opt.optimizer.index import ToolIndex
from vmcp_opt.optimizer.int8_pass import Int8FirstPass

QUERIES = [
    "what time is it in Tokyo",
    "Read the file README.md, then commit it to git and also fetch https://example.com",
    "getCurrentTime for Europe/London; convert_time to UTC",
    "the and of",  # stopwords only
    "what can you do for me please",  # the question words and pronouns the served list adds
    "",
    "Ünïcode wörds — dashes, x1 42 co-op",
    "read read read file",  # a repeated word counts again
]


def test_query_tokens_are_those_bm25s_tokenize_gives() -> None:
    texts = QUERIES + [tool_document(record) for record in CATALOGUE]
    for text in texts:
        expected = bm25s.tokenize(
            [text],
            stopwords=sorted(keyword_arm._stopword_set()),
            stemmer=keyword_arm._stem,
            return_ids=False,
            show_progress=False,
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


def _crowded_vectors(rng: np.random.Generator, rows: int, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of near-duplicates (many rows within the int8 error of each other at the cut), and zero rows
    for the tools without a vector."""
    centres = rng.standard_normal((rows // 50, dims)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), rows)] + 1e-3 * rng.standard_normal((rows, dims))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    has_vector = rng.random(rows) > 0.05
    vectors[~has_vector] = 0.0
    return vectors, has_vector


@pytest.mark.parametrize("queries", [1, 3, 5])
@pytest.mark.parametrize("filtered", [False, True])
def test_int8_first_pass_keeps_exactly_the_float32_candidates(queries: int, filtered: bool) -> None:
    rng = np.random.default_rng(10 + queries)
    vectors, has_vector = _crowded_vectors(rng, 5000, 64)
    config = OptimizerConfig()
    index = vector_arm.build(vectors, config)
    view = vector_arm.stored_vectors(index, 5000, 64)
    int8_pass = vector_arm.first_pass(view, config)
    assert int8_pass is not None
    allowed = rng.random(5000) > 0.5 if filtered else None
    # Queries near the clusters (unnormalised, as the fused variants are not) and one far from all of them.
    query_vectors = vectors[rng.integers(0, 5000, queries)] * 3 + 0.01 * rng.standard_normal((queries, 64))
    query_vectors[-1] = rng.standard_normal(64)
    query_vectors = query_vectors.astype(np.float32)
    for depth in (1, 10, 100, 6000):
        exact = vector_arm.candidates(index, has_vector, query_vectors, depth, allowed, config, view)
        fast = vector_arm.candidates(index, has_vector, query_vectors, depth, allowed, config, view, int8_pass)
        for row, (expected, got) in enumerate(zip(exact, fast, strict=True)):
            # The same scores; the same rows but where near-duplicates tie to float rounding at the cut.
            assert np.allclose(sorted(got.values()), sorted(expected.values()), atol=1e-6)
            true_scores = vectors.astype(np.float64) @ query_vectors[row].astype(np.float64)
            assert all(abs(true_scores[doc] - score) < 1e-5 for doc, score in got.items())
            assert len(got.keys() - expected.keys()) <= len(expected) // 10 + 1


def test_int8_scores_stay_within_their_bound() -> None:
    rng = np.random.default_rng(3)
    vectors, _ = _crowded_vectors(rng, 4200, 384)
    queries = rng.standard_normal((4, 384)).astype(np.float32)
    approximate, bound = Int8FirstPass(vectors).scores(queries)
    error = np.abs(approximate - queries @ vectors.T).max(axis=1)
    assert (error <= bound).all()
    # A bound that kept every row would be useless, not wrong: about 2 % of the query's norm here.
    assert (bound < 0.05 * np.linalg.norm(queries, axis=1)).all()


def test_int8_first_pass_only_where_it_pays() -> None:
    vectors = np.eye(5000, 16, dtype=np.float32)
    assert vector_arm.first_pass(vectors, OptimizerConfig()) is not None
    assert vector_arm.first_pass(vectors[:4095], OptimizerConfig()) is None
    assert vector_arm.first_pass(vectors, OptimizerConfig(int8_first_pass=False)) is None
    assert vector_arm.first_pass(vectors, OptimizerConfig(index_type="hnsw")) is None


def test_int8_first_pass_without_a_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(5)
    vectors, _ = _crowded_vectors(rng, 4200, 32)
    queries = rng.standard_normal((2, 32)).astype(np.float32)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))  # the model is loaded from its bytes
    approximate, bound = Int8FirstPass(vectors).scores(queries)
    assert (np.abs(approximate - queries @ vectors.T).max(axis=1) <= bound).all()

    def unavailable(_: np.ndarray) -> None:
        raise RuntimeError("no MatMulIntegerToFloat here")

    monkeypatch.setattr(vector_arm, "Int8FirstPass", unavailable)
    assert vector_arm.first_pass(vectors, OptimizerConfig()) is None  # the float32 scan serves instead
    assert "int8 first pass unavailable (no MatMulIntegerToFloat here)" in caplog.text


@pytest.fixture(scope="module")
def embedder() -> Iterator[TextEmbedder]:
    yield load_embedder("all-MiniLM-L6-v2", progress=False)


def test_an_index_with_the_int8_pass_searches_as_without(
    tmp_path: Path, embedder: TextEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vector_arm, "FIRST_PASS_MIN_ROWS", 1)  # the demo catalogue, far below the real floor
    exact = ToolIndex(OptimizerConfig(int8_first_pass=False), tmp_path / "exact", embedder)
    fast = ToolIndex(OptimizerConfig(), tmp_path / "fast", embedder)
    exact.update(CATALOGUE)
    fast.update(CATALOGUE)
    assert fast.stats()["int8_first_pass"] and not exact.stats()["int8_first_pass"]
    backends = {CATALOGUE[0].backend}
    for query in QUERIES:
        for kwargs in ({}, {"backends": backends}, {"limit": 2}):
            want = [(h.record.name, round(h.score, 5)) for h in exact.search(query, **kwargs).hits]
            assert [(h.record.name, round(h.score, 5)) for h in fast.search(query, **kwargs).hits] == want


def test_head_is_the_start_of_the_full_order() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        scores = [0.0, 0.5, 1.0, rng.random(), rng.random() * 1e-9]
        ranking_ = {rng.randrange(500): rng.choice(scores) for _ in range(rng.randrange(60))}
        count = rng.randrange(1, 12)
        assert ranking.head(ranking_, count) == ranking.order(ranking_)[:count]
