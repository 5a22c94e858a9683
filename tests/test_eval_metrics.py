"""Every metric of `vmcp eval` on cases small enough to compute by hand."""

from __future__ import annotations

import math

import pytest

from eval.metrics import (
    comp_at_k,
    evaluate,
    mrr_at_k,
    ndcg_at_k,
    paired_bootstrap,
    per_query_ndcg,
    percentile,
    recall_at_k,
)

RANKED = ["a", "b", "c", "d", "e"]
RELEVANT = {"b": 1, "d": 1, "z": 1}  # z is never retrieved


def test_recall_counts_relevant_tools_in_the_top_k_over_all_relevant() -> None:
    assert recall_at_k(RANKED, RELEVANT, 1) == 0.0
    assert recall_at_k(RANKED, RELEVANT, 2) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, {}, 5) == 0.0


def test_ndcg_discounts_by_log2_of_rank_plus_one() -> None:
    # DCG@3 = 1/log2(3); ideal DCG@3 with 3 relevant = 1 + 1/log2(3) + 1/2.
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3) + 0.5)
    assert ndcg_at_k(RANKED, RELEVANT, 3) == pytest.approx(expected)
    assert ndcg_at_k(["b", "d", "z"], RELEVANT, 3) == pytest.approx(1.0)
    assert ndcg_at_k(RANKED, {"q": 1}, 5) == 0.0


def test_ndcg_uses_graded_relevance_as_gain() -> None:
    relevant = {"a": 1, "b": 2}
    dcg = 1 / math.log2(2) + 2 / math.log2(3)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(["a", "b"], relevant, 2) == pytest.approx(dcg / idcg)


def test_mrr_is_the_reciprocal_rank_of_the_first_hit_within_k() -> None:
    assert mrr_at_k(RANKED, RELEVANT, 10) == pytest.approx(0.5)
    assert mrr_at_k(RANKED, {"e": 1}, 4) == 0.0
    assert mrr_at_k(RANKED, {"a": 1}) == 1.0


def test_comp_needs_every_relevant_tool_in_the_top_k() -> None:
    assert comp_at_k(RANKED, RELEVANT, 5) == 0.0  # z missing
    assert comp_at_k(RANKED, {"b": 1, "d": 1}, 4) == 1.0
    assert comp_at_k(RANKED, {"b": 1, "d": 1}, 3) == 0.0
    assert comp_at_k(RANKED, {}, 3) == 0.0


def test_percentile_interpolates_linearly_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile([], 50) == 0.0


def test_evaluate_averages_over_queries_and_scores_cutoff_rankings() -> None:
    rankings = {"q1": ["a", "b"], "q2": ["c", "d"]}
    qrels = {"q1": {"a": 1}, "q2": {"d": 1}}
    scores = evaluate(rankings, qrels, [1, 2])
    assert scores["recall@1"] == pytest.approx(0.5)
    assert scores["recall@2"] == pytest.approx(1.0)
    assert scores["mrr@10"] == pytest.approx(0.75)
    assert scores["comp@1"] == pytest.approx(0.5)
    # A method whose one-item list differs from the head of its longer list is scored on that list.
    at = {1: {"q1": ["b"], "q2": ["d"]}}
    assert evaluate(rankings, qrels, [1, 2], at)["recall@1"] == pytest.approx(0.5)


def test_per_query_ndcg_is_what_evaluate_averages() -> None:
    rankings = {"q1": ["a", "b"], "q2": ["x", "c"]}
    qrels = {"q1": {"a": 1}, "q2": {"c": 1}}
    per_query = per_query_ndcg(rankings, qrels, 10)
    assert per_query == {"q1": 1.0, "q2": pytest.approx(1 / math.log2(3))}
    assert sum(per_query.values()) / 2 == pytest.approx(evaluate(rankings, qrels, [10])["ndcg@10"])


def test_paired_bootstrap_interval_holds_the_gain_and_shrinks_with_agreement() -> None:
    assert paired_bootstrap([0.5, 0.7], [0.5, 0.7]) == (0.0, 0.0, 0.0)
    assert paired_bootstrap([0.6, 0.8, 1.0], [0.5, 0.7, 0.9]) == pytest.approx((0.1, 0.1, 0.1))
    # Half the queries gain 1, half lose nothing: the mean is 0.5 and the interval is wide but excludes 0.
    mean, low, high = paired_bootstrap([1.0] * 20 + [0.0] * 20, [0.0] * 40, seed=1)
    assert mean == 0.5 and 0.3 < low < 0.5 < high < 0.7
    # A gain of one query in a hundred is within the luck of the draw.
    mean, low, high = paired_bootstrap([1.0] + [0.0] * 99, [0.0] * 100)
    assert mean == pytest.approx(0.01) and low == 0.0
