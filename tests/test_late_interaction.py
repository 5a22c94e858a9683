"""Late-interaction re-ranking, now an eval-only `Reranker` (eval/late_interaction.py): MaxSim on
hand-computed cases, the blend, the stage in `ToolIndex`, and an old config that turned it on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from eval.late_interaction import LateInteraction, LateInteractionStage, TokenStore, blend
from vmcp_opt.config import ConfigError, OptimizerConfig, load_config
from vmcp_opt.optimizer.documents import tool_document
from vmcp_opt.optimizer.embedding import Embedder, load_torch_embedder
from vmcp_opt.optimizer.index import ToolIndex

from .test_optimizer_index import CATALOGUE


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
    return load_torch_embedder("all-MiniLM-L6-v2", progress=False)


def test_token_embeddings_come_from_the_same_pass_without_special_tokens(embedder: Embedder) -> None:
    vectors, matrices = embedder.encode_documents_with_tokens(["get current time", "read a file from disk"])
    assert vectors.shape == (2, 384)
    # [CLS] and [SEP] dropped: one row per word piece ("get current time" is three).
    assert [m.shape for m in matrices] == [(3, 384), (5, 384)]
    assert np.allclose(np.linalg.norm(matrices[0].astype(np.float32), axis=1), 1.0, atol=1e-2)
    only_vectors = embedder.encode_documents(["get current time"])
    assert np.allclose(only_vectors[0], vectors[0], atol=1e-5)


class _Counting(LateInteraction):
    """Late interaction that remembers the documents each stage was prepared for."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__(embedder)
        self.prepared: list[list[str]] = []

    def prepare(self, documents: Sequence[str]) -> LateInteractionStage:
        self.prepared.append(list(documents))
        return super().prepare(documents)


def test_rerank_reorders_the_fused_candidates_without_dropping_any(tmp_path: Path, embedder: Embedder) -> None:
    on = ToolIndex(OptimizerConfig(), tmp_path / "on", embedder, reranker=LateInteraction(embedder))
    off = ToolIndex(OptimizerConfig(), tmp_path / "off", embedder)
    on.update(CATALOGUE)
    off.update(CATALOGUE)
    query = "list the files in a directory"
    reranked = [h.record.name for h in on.search(query, limit=len(CATALOGUE)).hits]
    fused = [h.record.name for h in off.search(query, limit=len(CATALOGUE)).hits]
    assert reranked[0] == "fs_list_directory"
    assert sorted(reranked) == sorted(fused)


def test_each_update_prepares_a_stage_for_its_documents_in_index_order(tmp_path: Path, embedder: Embedder) -> None:
    reranker = _Counting(embedder)
    index = ToolIndex(OptimizerConfig(), tmp_path, embedder, reranker=reranker)
    index.update(CATALOGUE)
    assert reranker.prepared == [[tool_document(record) for record in CATALOGUE]]
    index.update_keywords(CATALOGUE)  # no model: no second stage until the next update
    assert len(reranker.prepared) == 1
    assert index.search("list the files in a directory").hits[0].record.name == "fs_list_directory"


def test_a_config_that_turned_reranking_on_fails_and_names_the_way_to_measure_it(tmp_path: Path) -> None:
    config = tmp_path / "vmcp.yaml"
    config.write_text("optimizer:\n  rerank: late-interaction\n  rerank_weight: 0.6\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    [problem] = raised.value.problems
    assert problem.startswith("optimizer: ") and "rerank: 'late-interaction' is no longer available" in problem
    assert "--methods optimizer-late-interaction" in problem


def test_a_config_that_set_reranking_off_still_loads(tmp_path: Path) -> None:
    config = tmp_path / "vmcp.yaml"
    config.write_text("optimizer:\n  rerank: none\n  rerank_weight: 0.7\n  candidates: 50\n", encoding="utf-8")
    assert load_config(config).optimizer.candidates == 50
