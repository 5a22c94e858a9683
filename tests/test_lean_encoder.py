"""The lean encoder (optimizer/encoder.py) against sentence-transformers' `encode`, and one batch per request.

Real model loads (local, offline): the reference is a separately loaded SentenceTransformer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_optimizer_index import CATALOGUE
from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.embedding import Embedder, load_torch_embedder
from vmcp_opt.optimizer.encoder import LeanEncoder
from vmcp_opt.optimizer.index import ToolIndex
from vmcp_opt.optimizer.model_registry import resolve_model

TEXTS = [
    "",
    "time",
    "What time is it in Tokyo right now?",
    "find the weather in Paris, then email it to Bob",
    "Créer un rendez-vous demain à 9h — naïve café 東京 🙂",
    "get_user_token(username, password) -> token: GetUserToken issues the token ModifyAlarm requires",
    # Longer than max_seq_length (256 word pieces): both sides must truncate alike.
    " ".join(f"parameter{i} describes field number {i} of the request body" for i in range(80)),
]


@pytest.fixture(scope="module")
def reference() -> Any:
    from sentence_transformers import SentenceTransformer

    spec = resolve_model("all-MiniLM-L6-v2")
    model = SentenceTransformer(str(spec.path), device="cpu", local_files_only=True)
    model.max_seq_length = spec.max_seq_length
    return model


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_torch_embedder("all-MiniLM-L6-v2", progress=False)


def _expected(reference: Any, texts: Sequence[str]) -> np.ndarray:
    # sentence-transformers' own batching (length-sorted, 32 a batch): padding leaves the vectors as they are,
    # and one batch of hundreds of texts padded to the longest (256 word pieces) took ~20 s of forward passes.
    return np.asarray(reference.encode(list(texts), normalize_embeddings=True))


def test_lean_encoder_matches_sentence_transformers_one_text_at_a_time(reference: Any) -> None:
    lean = LeanEncoder.from_sentence_transformer(reference)
    assert lean is not None
    expected = _expected(reference, TEXTS)
    for text, row in zip(TEXTS, expected, strict=True):
        assert float(lean.encode([text])[0] @ row) >= 0.999, text


def test_lean_encoder_matches_sentence_transformers_in_padded_batches(reference: Any) -> None:
    lean = LeanEncoder.from_sentence_transformer(reference)
    assert lean is not None
    cosines = (lean.encode(TEXTS) * _expected(reference, TEXTS)).sum(axis=1)
    assert cosines.min() >= 0.999, cosines


def test_bfloat16_query_path_stays_within_cosine_0999(reference: Any, embedder: Embedder) -> None:
    if not embedder.query_bfloat16:
        pytest.skip("this CPU has no native bfloat16: queries stay float32")
    cosines = (embedder.encode_queries(TEXTS) * _expected(reference, TEXTS)).sum(axis=1)
    assert cosines.min() >= 0.999, cosines


def test_bulk_documents_match_sentence_transformers(reference: Any, embedder: Embedder) -> None:
    # Enough documents for the bulk bfloat16 path, in mixed lengths so batches are padded and reordered.
    documents = [f"{text} ({i})" for i in range(30) for text in TEXTS]
    vectors = embedder.encode_documents(documents)
    cosines = (vectors * _expected(reference, documents)).sum(axis=1)
    assert cosines.min() >= 0.999, cosines.min()


def test_models_the_lean_path_cannot_reproduce_are_left_to_sentence_transformers() -> None:
    class Transformer:
        auto_model = None

    class Pooling:
        pooling_mode_mean_tokens = False

    assert LeanEncoder.from_sentence_transformer([Transformer(), Pooling()]) is None


class _Recording:
    """An embedder that records each query batch; `one_by_one` embeds each text on its own instead."""

    def __init__(self, inner: Embedder, one_by_one: bool = False) -> None:
        self.inner = inner
        self.one_by_one = one_by_one
        self.batches: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        if self.one_by_one:
            return np.concatenate([self.inner.encode_queries([text]) for text in texts])
        return self.inner.encode_queries(texts)


MULTI_INTENT = "what time is it in Tokyo, then save a note about the meeting in memory. also fetch the agenda page"


def test_all_texts_of_one_request_go_through_the_model_in_one_batch(tmp_path: Path, embedder: Embedder) -> None:
    recording = _Recording(embedder)
    index = ToolIndex(OptimizerConfig(), tmp_path, recording)  # type: ignore[arg-type]
    index.update(CATALOGUE)
    index.search(MULTI_INTENT)
    assert len(recording.batches) == 1
    assert len(recording.batches[0]) >= 3  # the request and its intents


def test_batched_intents_rank_as_embedding_them_one_after_another(tmp_path: Path, embedder: Embedder) -> None:
    batched = ToolIndex(OptimizerConfig(), tmp_path / "a", _Recording(embedder))  # type: ignore[arg-type]
    serial = ToolIndex(OptimizerConfig(), tmp_path / "b", _Recording(embedder, one_by_one=True))  # type: ignore[arg-type]
    for query in (MULTI_INTENT, "convert 9am London time to New York; then commit the changes to git"):
        for index in (batched, serial):
            index.update(CATALOGUE)
        one, other = batched.search(query), serial.search(query)
        assert [hit.record.name for hit in one.hits] == [hit.record.name for hit in other.hits]
        # bfloat16 GEMMs block a padded batch differently: scores agree to ~0.003 after min-max scaling.
        assert [hit.score for hit in one.hits] == pytest.approx([hit.score for hit in other.hits], abs=1e-2)
