"""Pseudo-relevance feedback (optimizer/feedback.py) and the share rule's parameter names in the head.

The keyword parts run on a real bm25 index of a few documents; the index-level tests use the real embedding
model (local, ~3 s to load).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import feedback, keyword_arm
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.embedding import TextEmbedder, load_embedder
from vmcp_opt.optimizer.index import ToolIndex

DOCUMENTS = [
    "weather forecast: daily weather forecast for a city, rain and temperature",
    "rain radar: precipitation maps and rain alerts for a region",
    "stock quote: latest price of a stock on an exchange",
    "send email: send an email message to a recipient",
]

CATALOGUE = [
    ToolRecord("weather_forecast", "weather", "Daily weather forecast for a city: rain and temperature"),
    ToolRecord("weather_rain_radar", "weather", "Precipitation maps and rain alerts for a region"),
    ToolRecord("finance_stock_quote", "finance", "Latest price of a stock on an exchange"),
    ToolRecord("mail_send_email", "mail", "Send an email message to a recipient"),
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[TextEmbedder]:
    yield load_embedder("all-MiniLM-L6-v2", progress=False)


def _bm25() -> object:
    return keyword_arm.build(DOCUMENTS, OptimizerConfig())


def test_off_by_default_and_without_a_feedback_arm() -> None:
    assert not feedback.enabled(OptimizerConfig())
    assert not feedback.enabled(OptimizerConfig(feedback_docs=5))  # no arm is moved
    assert feedback.enabled(OptimizerConfig(feedback_docs=5, feedback_dense=0.2))
    with pytest.raises(ValidationError):
        OptimizerConfig(feedback_docs=-1)


def test_document_rows_hold_each_documents_own_bm25_weights() -> None:
    bm25 = _bm25()
    rows = feedback._document_rows(bm25)
    assert feedback._document_rows(bm25) is rows  # transposed once per index
    for doc in range(len(DOCUMENTS)):
        tokens = rows.indices[rows.indptr[doc] : rows.indptr[doc + 1]]
        weights = {int(token): 1.0 for token in tokens}
        # Scoring a document's own tokens at weight 1 gives the sum of its row: the rows are the columns' values.
        expected = float(rows.data[rows.indptr[doc] : rows.indptr[doc + 1]].sum())
        scores = keyword_arm.weighted_candidates(bm25, weights, len(DOCUMENTS), None)
        assert scores[doc] == pytest.approx(expected, rel=1e-5)


def test_weighted_candidates_at_weight_one_are_the_plain_keyword_arm() -> None:
    bm25 = _bm25()
    ids = keyword_arm.query_ids(bm25, "rain forecast rain")
    weights: dict[int, float] = {}
    for token in ids:
        weights[token] = weights.get(token, 0.0) + 1.0
    plain = keyword_arm.candidates(bm25, "rain forecast rain", 10, None)
    weighted = keyword_arm.weighted_candidates(bm25, weights, 10, None)
    assert plain.keys() == weighted.keys()
    assert all(weighted[doc] == pytest.approx(plain[doc], rel=1e-6) for doc in plain)


def test_feedback_terms_reach_a_tool_the_query_does_not_name() -> None:
    bm25 = _bm25()
    config = OptimizerConfig(feedback_docs=1, feedback_terms=5, feedback_term_weight=0.5)
    # "weather" matches only the forecast; its heaviest other tokens ("rain" among them) bring the radar in.
    plain = keyword_arm.candidates(bm25, "weather", 10, None)
    assert set(plain) == {0}
    terms = feedback.feedback_terms(bm25, [0], {0: 1.0}, set(keyword_arm.query_ids(bm25, "weather")), 5)
    assert max(terms.values()) == 1.0 and len(terms) <= 5
    assert keyword_arm.query_ids(bm25, "weather")[0] not in terms
    expanded = feedback.expanded_keywords(bm25, "weather", [0], {0: 1.0}, 10, None, config)
    assert 1 in expanded and expanded[0] > expanded[1]  # the forecast stays first
    assert 2 not in expanded and 3 not in expanded  # nothing the forecast does not share
    # A filter still applies to what feedback brings in.
    allowed = np.array([True, False, True, True])
    assert 1 not in feedback.expanded_keywords(bm25, "weather", [0], {0: 1.0}, 10, allowed, config)


def test_rocchio_moves_the_query_toward_the_results_and_keeps_unit_length() -> None:
    vectors = np.eye(3, dtype=np.float32)
    query = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    has_vector = np.array([True, True, False])
    moved = feedback.rocchio(query, vectors, has_vector, [1, 2], 1.0)  # row 2 has no vector: left out
    assert moved @ vectors[1] > 0 and moved[2] == 0.0
    assert float(np.linalg.norm(moved)) == pytest.approx(1.0, abs=1e-6)
    assert feedback.rocchio(query, vectors, has_vector, [2], 1.0) is query  # nothing to move toward


def test_feedback_off_serves_todays_ranking(tmp_path: Path, embedder: TextEmbedder) -> None:
    today = ToolIndex(OptimizerConfig(usage=False), tmp_path / "a", embedder)
    today.update(CATALOGUE)
    unmoved = ToolIndex(OptimizerConfig(usage=False, feedback_dense=0.5, feedback_terms=5), tmp_path / "b", embedder)
    unmoved.update(CATALOGUE)  # feedback_docs 0: the other settings do nothing
    for query in ("will it rain in Lyon tomorrow", "price of a share", "email my boss"):
        first = [(hit.record.name, hit.score) for hit in today.search(query).hits]
        assert [(hit.record.name, hit.score) for hit in unmoved.search(query).hits] == first


def test_feedback_through_the_index_keeps_the_match_first_and_respects_filters(
    tmp_path: Path, embedder: TextEmbedder
) -> None:
    config = OptimizerConfig(usage=False, feedback_docs=2, feedback_dense=0.5, feedback_terms=5)
    index = ToolIndex(config, tmp_path, embedder)
    index.update(CATALOGUE)
    result = index.search("daily weather forecast for my city")
    assert result.mode == "hybrid" and result.hits[0].record.name == "weather_forecast"
    # The radar shares the forecast's words ("rain") and stays next to it.
    assert result.hits[1].record.name == "weather_rain_radar"
    filtered = index.search("daily weather forecast for my city", backends=["finance", "mail"]).hits
    assert filtered and {hit.record.backend for hit in filtered} <= {"finance", "mail"}


def test_parameter_names_in_the_head_count_as_parameter_words() -> None:
    # 8 head tokens of which 2 ("liters", "percentage") are the tool's own parameter names; 2 parameter tokens.
    heads = ["convert volume: This method takes two arguments, liters and percentage"]
    parameters = ["liters\npercentage"]
    plain = keyword_arm.parameter_weight_for_share(heads, parameters, 0.232)
    assert plain == pytest.approx(0.232 * 8 / (0.768 * 2))
    named = keyword_arm.parameter_weight_for_share(heads, parameters, 0.232, names_in_head=True)
    assert named == pytest.approx(0.232 * 6 / (0.768 * 4))  # the described catalogue is not weighed up
    # A head that does not name its parameters is weighed as before; the cap holds.
    other = ["convert volume: change a quantity into another unit"]
    assert keyword_arm.parameter_weight_for_share(other, parameters, 0.232, names_in_head=True) == pytest.approx(
        keyword_arm.parameter_weight_for_share(other, parameters, 0.232)
    )
    assert keyword_arm.parameter_weight_for_share(heads, parameters, 0.9, names_in_head=True, cap=2.0) == 2.0
    with pytest.raises(ValidationError):
        OptimizerConfig(parameter_share_cap=6.0)
