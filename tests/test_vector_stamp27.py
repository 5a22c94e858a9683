"""Eval's vector cache (eval/embed.py) names the graph that made its document vectors, besides the model: the
encoder (precision included) and the ONNX export recipe (onnx_export.RECIPE_VERSION). A recipe change (an
upgrade) or another encoder re-embeds; an unchanged setup reuses every vector. On the real model and its real
ONNX graphs. (The gateway's own index keeps one set of vectors per model on purpose: optimizer/vector_store.py.)

The recipe is changed as an upgrade changes it, by the constant (as tests/test_export23_shared_cache.py does):
the graph already loaded stays, so the test measures the stamp alone, not a re-export."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from eval.embed import SharedEmbedder
from vmcp_opt.optimizer import onnx_export
from vmcp_opt.optimizer.documents import tool_document
from vmcp_opt.optimizer.embedding import TextEmbedder, load_embedder

from .test_optimizer_index import CATALOGUE

DOCUMENTS = [tool_document(record) for record in CATALOGUE]


@pytest.fixture(scope="module")
def int8(real_export: Path) -> Iterator[TextEmbedder]:
    """The gateway's default encoder: ONNX Runtime, the int8 graph."""
    embedder = load_embedder("all-MiniLM-L6-v2", encoder="onnx", precision="int8")
    assert embedder.kind == "onnx-int8", "the ONNX int8 graph did not load"
    yield embedder


@pytest.fixture(scope="module")
def fp32(real_export: Path) -> Iterator[TextEmbedder]:
    embedder = load_embedder("all-MiniLM-L6-v2", encoder="onnx", precision="fp32")
    assert embedder.kind == "onnx", "the ONNX fp32 graph did not load"
    yield embedder


def next_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_export, "RECIPE_VERSION", onnx_export.RECIPE_VERSION + 1)


def test_eval_cache_is_embedded_again_after_a_recipe_change_and_reused_otherwise(
    tmp_path: Path, int8: TextEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = SharedEmbedder(int8, tmp_path)
    first.encode_documents(DOCUMENTS)
    assert first.embedded == len(set(DOCUMENTS))
    unchanged = SharedEmbedder(int8, tmp_path)
    unchanged.encode_documents(DOCUMENTS)
    assert unchanged.embedded == 0
    next_recipe(monkeypatch)
    upgraded = SharedEmbedder(int8, tmp_path)
    upgraded.encode_documents(DOCUMENTS)
    assert upgraded.embedded == len(set(DOCUMENTS))


def test_eval_cache_of_one_precision_is_not_read_by_another(
    tmp_path: Path, int8: TextEmbedder, fp32: TextEmbedder
) -> None:
    """One cache directory given to two encoders hands neither the other's vectors."""
    SharedEmbedder(int8, tmp_path).encode_documents(DOCUMENTS)
    other = SharedEmbedder(fp32, tmp_path)
    vectors = other.encode_documents(DOCUMENTS)
    assert other.embedded == len(set(DOCUMENTS))
    np.testing.assert_allclose(vectors, fp32.encode_documents(DOCUMENTS), atol=1e-5)
