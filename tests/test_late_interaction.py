"""Late-interaction re-ranking: MaxSim on hand-computed cases, the blend, and the token store's life in
the index (built in the same pass as the vectors, persisted, reloaded, rebuilt when missing)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.embedding import Embedder, load_embedder
from vmcp_opt.optimizer.index import VECTORS_FILE, ToolIndex
from vmcp_opt.optimizer.late_interaction import TokenStore
from vmcp_opt.optimizer.ranking import blend

from .test_optimizer_index import CATALOGUE

LATE = OptimizerConfig(rerank="late-interaction")


def _unit(*rows: list[float]) -> np.ndarray:
    matrix = np.array(rows, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_maxsim_is_the_mean_over_query_tokens_of_the_best_document_token() -> None:
    doc0 = _unit([1, 0, 0], [0, 1, 0])  # matches both query tokens exactly
    doc1 = _unit([1, 0, 0])  # matches the first only; best for the second is cos 0
    empty = np.zeros((0, 3), dtype=np.float32)  # not embedded yet: left out
    doc3 = _unit([1, 1, 0])  # cos 1/sqrt(2) with each query token
    store = TokenStore.from_matrices([doc0, doc1, empty, doc3], dims=3)
    query = _unit([1, 0, 0], [0, 1, 0])
    scores = store.maxsim(query, [0, 1, 2, 3])
    assert set(scores) == {0, 1, 3}
    assert scores[0] == pytest.approx(1.0, abs=1e-3)
    assert scores[1] == pytest.approx(0.5, abs=1e-3)
    assert scores[3] == pytest.approx(2**-0.5, abs=1e-3)
    assert store.tokens.dtype == np.float16 and list(store.offsets) == [0, 2, 3, 3, 4]


def test_maxsim_of_no_candidates_or_empty_query_is_empty() -> None:
    store = TokenStore.from_matrices([_unit([1, 0])], dims=2)
    assert store.maxsim(_unit([1, 0]), []) == {}
    assert store.maxsim(np.zeros((0, 2), dtype=np.float32), [0]) == {}


def test_blend_scales_each_signal_and_scores_only_candidates() -> None:
    late = {1: 0.9, 2: 0.5, 3: 0.7}
    sparse = {2: 10.0, 3: 0.0, 7: 5.0}  # 7 is no candidate: ignored, but it shapes the keyword scale
    fused = blend(late, sparse, 0.75, [1, 2, 3])
    assert set(fused) == {1, 2, 3}
    assert fused[1] == pytest.approx(0.75 * 1.0)  # best late score, no keyword match
    assert fused[2] == pytest.approx(0.75 * 0.0 + 0.25 * 1.0)
    assert fused[3] == pytest.approx(0.75 * 0.5)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder("all-MiniLM-L6-v2", progress=False)


def test_token_embeddings_come_from_the_same_pass_without_special_tokens(embedder: Embedder) -> None:
    vectors, matrices = embedder.encode_documents_with_tokens(["get current time", "read a file from disk"])
    assert vectors.shape == (2, 384)
    # [CLS] and [SEP] dropped: one row per word piece ("get current time" is three).
    assert [m.shape for m in matrices] == [(3, 384), (5, 384)]
    assert np.allclose(np.linalg.norm(matrices[0].astype(np.float32), axis=1), 1.0, atol=1e-2)
    only_vectors = embedder.encode_documents(["get current time"])
    assert np.allclose(only_vectors[0], vectors[0], atol=1e-5)


def test_index_persists_tokens_and_a_restart_reranks_without_embedding(tmp_path: Path, embedder: Embedder) -> None:
    first = ToolIndex(LATE, tmp_path, embedder)
    first.update(CATALOGUE)
    assert first.stats()["token_store_bytes"] > 0
    restarted = ToolIndex(LATE, tmp_path, embedder)
    stats = restarted.update(CATALOGUE)
    assert (stats.embedded, stats.reused) == (0, len(CATALOGUE))
    assert restarted.stats()["token_store_bytes"] == first.stats()["token_store_bytes"]
    top = restarted.search("what time is it in Tokyo right now").hits[0]
    assert top.record.name == "time_get_current_time"


def test_a_backend_that_comes_back_gets_its_kept_tokens_too(tmp_path: Path, embedder: Embedder) -> None:
    first = ToolIndex(LATE, tmp_path, embedder)
    first.update(CATALOGUE)
    full = first.stats()["token_store_bytes"]
    first.update([record for record in CATALOGUE if record.backend != "time"])
    restarted = ToolIndex(LATE, tmp_path, embedder)  # the kept tokens come back from disk
    stats = restarted.update(CATALOGUE)
    assert (stats.embedded, stats.reused) == (0, len(CATALOGUE))
    assert restarted.stats()["token_store_bytes"] == full
    assert restarted.search("what time is it in Tokyo right now").hits[0].record.name == "time_get_current_time"


def test_default_stores_no_tokens_and_its_cache_is_rebuilt_when_reranking_is_turned_on(
    tmp_path: Path, embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    plain = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    plain.update(CATALOGUE)
    assert plain.stats()["token_store_bytes"] == 0
    with np.load(plain.directory / VECTORS_FILE) as data:
        assert "tokens" not in data
    with caplog.at_level(logging.WARNING):
        stats = ToolIndex(LATE, tmp_path, embedder).update(CATALOGUE)
    assert stats.embedded == len(CATALOGUE)
    assert "no token embeddings" in caplog.text


def test_rerank_reorders_the_fused_candidates_without_dropping_any(tmp_path: Path, embedder: Embedder) -> None:
    on = ToolIndex(LATE, tmp_path / "on", embedder)
    off = ToolIndex(OptimizerConfig(rerank="none"), tmp_path / "off", embedder)
    on.update(CATALOGUE)
    off.update(CATALOGUE)
    query = "list the files in a directory"
    reranked = [h.record.name for h in on.search(query, limit=len(CATALOGUE)).hits]
    fused = [h.record.name for h in off.search(query, limit=len(CATALOGUE)).hits]
    assert reranked[0] == "fs_list_directory"
    assert sorted(reranked) == sorted(fused)
