"""The query-length variants of the eval (eval/query_cap.py, issue 19 goal 3) on the served int8 ONNX encoder:
a capped text embeds exactly as its first tokens do, short texts are untouched, and a multi-intent request's
own vector is capped or dropped while its intents keep theirs; the fifteenth round's query template
(eval/query_template.py) wraps each text and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from eval.query_cap import CappedQueries, TokenCutter
from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.model_registry import DEFAULT_MODEL, resolve_model
from vmcp_opt.optimizer.onnx_encoder import OnnxEmbedder, load_onnx_embedder

LONG = (
    "Summarise the unread customer-support tickets tagged urgent from the last fortnight, group them by product "
    "area and severity, and draft a short status update for the engineering managers with the counts"
)
SHORT = "weather in Paris tomorrow"
MULTI = "find the weather forecast in Paris for tomorrow, then email the forecast to Bob"


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    spec = resolve_model(DEFAULT_MODEL)
    return load_onnx_embedder(spec, Path(os.environ["VMCP_OPTIMIZER__MODEL_CACHE"]), precision="int8")


@pytest.fixture(scope="module")
def cutter(embedder: OnnxEmbedder) -> TokenCutter:
    return TokenCutter(str(embedder.spec.path / "tokenizer.json"), embedder.spec.query_prefix)


def test_a_capped_text_embeds_as_its_first_tokens(embedder: OnnxEmbedder, cutter: TokenCutter) -> None:
    ids = embedder.encoder.tokenize([LONG])[0]
    assert len(ids) > 24
    for cap in (8, 16, 24):
        cut = cutter.cut(LONG, cap)
        kept = cutter.count(cut)
        # Whole words only: never over the cap, at most one word's pieces under it.
        assert cap - 4 <= kept <= cap
        first = [*ids[: kept - 1], ids[-1]]  # [CLS] + the first tokens + [SEP]
        assert embedder.encoder.tokenize([cut])[0] == first
        capped = CappedQueries(embedder, cutter, OptimizerConfig(), cap, None).encode_queries([LONG])
        np.testing.assert_allclose(capped[0], embedder.encoder.encode_ids([first])[0], atol=1e-6)
        assert float(capped[0] @ embedder.encode_queries([LONG])[0]) < 0.999


def test_texts_within_the_cap_are_unchanged(embedder: OnnxEmbedder, cutter: TokenCutter) -> None:
    cap = cutter.count(LONG)
    assert cutter.cut(LONG, cap) == LONG and cutter.cut(SHORT, 8) == SHORT
    capped = CappedQueries(embedder, cutter, OptimizerConfig(), cap, None).encode_queries([SHORT, LONG])
    np.testing.assert_allclose(capped, embedder.encode_queries([SHORT, LONG]), atol=1e-6)


def test_a_multi_intent_request_has_its_own_vector_capped_or_dropped(
    embedder: OnnxEmbedder, cutter: TokenCutter
) -> None:
    intent = "email the forecast to Bob"
    # int8 activations are scaled per batch, so each expectation embeds the very batch the wrapper runs.
    dropped = CappedQueries(embedder, cutter, OptimizerConfig(), 64, 0).encode_queries([MULTI, intent])
    assert not dropped[0].any()
    np.testing.assert_allclose(dropped[1], embedder.encode_queries([intent])[0], atol=1e-6)
    capped = CappedQueries(embedder, cutter, OptimizerConfig(), 64, 6).encode_queries([MULTI, intent])
    cut = cutter.cut(MULTI, 6)
    assert cut == "find the weather forecast"
    np.testing.assert_allclose(capped, embedder.encode_queries([cut, intent]), atol=1e-6)
    # With intent splitting off the request is one query and keeps its vector.
    unsplit = CappedQueries(embedder, cutter, OptimizerConfig(split_intents=False), 64, 0)
    np.testing.assert_allclose(unsplit.encode_queries([MULTI])[0], embedder.encode_queries([MULTI])[0], atol=1e-6)


def test_a_template_wraps_each_text_the_vector_arm_embeds(embedder: OnnxEmbedder) -> None:
    from eval.query_template import API_TEMPLATE, TemplatedQueries, templated

    wrapped = templated(embedder, API_TEMPLATE)
    assert isinstance(wrapped, TemplatedQueries) and templated(embedder, None) is embedder
    vectors = wrapped.encode_queries([SHORT, MULTI])
    expected = embedder.encode_queries([f"API to {SHORT}", f"API to {MULTI}"])
    assert np.allclose(vectors, expected, atol=1e-6)
    assert not np.allclose(vectors[0], embedder.encode_queries([SHORT])[0], atol=1e-3)
    assert wrapped.dimensions == embedder.dimensions  # everything else is the embedder's
    with pytest.raises(ValueError, match="once"):
        TemplatedQueries(embedder, "API to")
