"""The ToolHive baseline: its keyword query, its slot arithmetic and its merge."""

from __future__ import annotations

import numpy as np

from eval.toolhive import ToolHiveRanker, embedding_text, go_round, keyword_expression, merge, slot_split


def test_keyword_query_drops_schema_words_and_or_joins_quoted_words() -> None:
    assert keyword_expression("find the weather data for Paris") == '"find" OR "the" OR "weather" OR "for" OR "Paris"'
    assert keyword_expression('say "hi"') == '"say" OR """hi"""'
    assert keyword_expression("name description") == ""
    assert keyword_expression("   ") == ""


def test_source_mode_turns_a_query_with_a_schema_word_into_one_phrase() -> None:
    assert keyword_expression("get user data", "source") == '"get user data"'
    assert keyword_expression("weather", "source") == '"weather"'
    assert keyword_expression("weather in Paris", "source") == '"weather" OR "in" OR "Paris"'


def test_slots_round_half_away_from_zero_like_go() -> None:
    assert go_round(2.5) == 3 and round(2.5) == 2
    assert go_round(0.5) == 1
    assert slot_split(5) == (2, 3)  # (keyword, semantic)
    assert slot_split(10) == (5, 5)
    assert slot_split(1) == (0, 1)
    assert slot_split(3) == (1, 2)
    assert slot_split(8) == (4, 4)


def test_merge_puts_semantic_first_dedupes_and_does_not_back_fill() -> None:
    assert merge([3, 1], [1, 2], 4) == [3, 1, 2]
    assert merge([3, 1, 5], [1, 2], 3) == [3, 1, 5]


def test_ranker_drops_rows_beyond_the_distance_threshold_and_ranks_fts_by_bm25() -> None:
    names = ["get_weather", "send_email", "opposite"]
    descriptions = ["Weather forecast for a city", "Send an email message", "nothing"]
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    ranker = ToolHiveRanker(names, descriptions, vectors)
    query = np.array([1.0, 0.0], dtype=np.float32)
    # distances: 0, 1, 2 -> the third (distance 2 > 1.0) is dropped.
    assert ranker.semantic(query, 3) == [0, 1]
    assert ranker.keyword("emails please", 2) == [1]  # porter stemming: emails -> email
    # total 2: one semantic slot (get_weather), one keyword slot (send_email).
    assert ranker.search("emails please", query, 2) == [0, 1]
    assert embedding_text("a", "b") == "name: a description: b"
