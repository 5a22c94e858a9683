"""The optimizer's index library: documents, hashes, search, updates beside searches, the query cache.

Persistence is in test_vector_store.py, the boosts after fusion in test_boosts.py, both on this CATALOGUE.

Uses the real embedding model (local, ~3 s to load), shared by every test in this module.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import ranking
from vmcp_opt.optimizer.documents import ToolRecord, content_hash, split_identifier, tool_document
from vmcp_opt.optimizer.embedding import TextEmbedder, load_embedder
from vmcp_opt.optimizer.index import ToolIndex
from vmcp_opt.optimizer.meta_tool_forms import tool_json
from vmcp_opt.optimizer.tokens import COUNT_BATCH, AnswerTokens, count_tokens

LOCAL_TZ = "Europe/London"


def _schema(**properties: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": "string", "description": text} for name, text in properties.items()},
        "required": list(properties),
    }


# Real tool definitions from the demo backends (mcp-server-time, server-filesystem, server-memory,
# mcp-server-fetch, mcp-server-git), routable names prefixed with the backend as the gateway does.
CATALOGUE = [
    ToolRecord(
        "time_get_current_time",
        "time",
        "Get current time in a specific timezone",
        _schema(
            timezone=f"IANA timezone name (e.g., 'America/New_York', 'Europe/London'). Use '{LOCAL_TZ}' as local "
            "timezone if no timezone provided by the user."
        ),
        original_name="get_current_time",
    ),
    ToolRecord(
        "time_convert_time",
        "time",
        "Convert time between timezones",
        _schema(
            source_timezone="Source IANA timezone name (e.g., 'America/New_York', 'Europe/London'). Use "
            f"'{LOCAL_TZ}' as local timezone if no source timezone provided by the user.",
            time="Time to convert in 24-hour format (HH:MM)",
            target_timezone="Target IANA timezone name (e.g., 'Asia/Tokyo', 'America/San_Francisco'). Use "
            f"'{LOCAL_TZ}' as local timezone if no target timezone provided by the user.",
        ),
        original_name="convert_time",
    ),
    ToolRecord(
        "fs_read_text_file",
        "fs",
        "Read the complete contents of a file from the file system as text.",
        _schema(path="Path of the file"),
        original_name="read_text_file",
    ),
    ToolRecord(
        "fs_list_directory",
        "fs",
        "Get a detailed listing of all files and directories in a specified path.",
        _schema(path="Directory to list"),
        original_name="list_directory",
    ),
    ToolRecord(
        "fs_write_file",
        "fs",
        "Create a new file or completely overwrite an existing file with new content.",
        _schema(path="Path of the file", content="Text to write"),
        original_name="write_file",
    ),
    ToolRecord(
        "memory_create_entities",
        "memory",
        "Create multiple new entities in the knowledge graph",
        {"type": "object", "properties": {"entities": {"type": "array", "items": _schema(name="Entity name")}}},
        original_name="create_entities",
    ),
    ToolRecord(
        "memory_search_nodes",
        "memory",
        "Search for nodes in the knowledge graph based on a query",
        _schema(query="The search query to match against entity names, types, and observation content"),
        original_name="search_nodes",
    ),
    ToolRecord(
        "fetch_fetch",
        "fetch",
        "Fetches a URL from the internet and optionally extracts its contents as markdown.",
        _schema(url="URL to fetch"),
        original_name="fetch",
    ),
    ToolRecord(
        "git_git_log",
        "git",
        "Shows the commit logs",
        _schema(repo_path="Path to the Git repository"),
        original_name="git_log",
    ),
    ToolRecord(
        "git_git_commit",
        "git",
        "Records changes to the repository",
        _schema(repo_path="Path to the Git repository", message="Commit message"),
        original_name="git_commit",
    ),
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[TextEmbedder]:
    yield load_embedder("all-MiniLM-L6-v2", progress=False)


@pytest.fixture
def index(tmp_path: Path, embedder: TextEmbedder) -> ToolIndex:
    return ToolIndex(OptimizerConfig(), tmp_path, embedder)


def names(index: ToolIndex, query: str, **kwargs: Any) -> list[str]:
    return [hit.record.name for hit in index.search(query, **kwargs).hits]


def test_split_identifier_handles_snake_camel_kebab_and_digits() -> None:
    assert split_identifier("get_current_time") == ["get", "current", "time"]
    assert split_identifier("getCurrentTime") == ["get", "current", "time"]
    assert split_identifier("list-directory") == ["list", "directory"]
    assert split_identifier("parseHTMLPage2") == ["parse", "html", "page", "2"]


def test_tool_document_holds_backend_split_name_description_and_parameters() -> None:
    document = tool_document(replace(CATALOGUE[1], backend_description="Time and timezone conversion"))
    assert "time: Time and timezone conversion" in document
    assert "convert time (convert_time)" in document
    assert "Convert time between timezones" in document
    assert "target timezone: Target IANA timezone name" in document


def test_tool_document_walks_nested_parameters() -> None:
    assert "name: Entity name" in tool_document(CATALOGUE[5])


def test_content_hash_is_stable_and_tracks_the_document() -> None:
    record = CATALOGUE[0]
    same = ToolRecord(**{f: getattr(record, f) for f in record.__dataclass_fields__})
    assert content_hash(record) == content_hash(same)
    assert len(content_hash(record)) == 64
    assert content_hash(replace(record, description="Something else")) != content_hash(record)
    assert hash(record) == hash(same)  # records are usable as dict keys despite the schema dict


def test_update_logs_embedded_and_reused(index: ToolIndex, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vmcp_opt.optimizer.index"):
        index.update(CATALOGUE)
    assert f"index updated: embedded {len(CATALOGUE)}, reused 0, removed 0" in caplog.text


def test_keyword_search_works_before_vectors(tmp_path: Path) -> None:
    index = ToolIndex(OptimizerConfig(), tmp_path)  # no model at all
    index.update_keywords(CATALOGUE)
    result = index.search("show the git commit logs")
    assert result.mode == "keyword"
    assert not index.dense_ready
    assert result.hits[0].record.name == "git_git_log"


def test_keyword_refresh_reuses_cached_vectors(tmp_path: Path, embedder: TextEmbedder) -> None:
    ToolIndex(OptimizerConfig(), tmp_path, embedder).update(CATALOGUE)
    index = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    index.update_keywords(CATALOGUE)
    assert index.dense_ready
    assert index.search("what time is it in Tokyo right now").mode == "hybrid"


def test_backend_filter_keeps_only_named_backends(index: ToolIndex) -> None:
    index.update(CATALOGUE)
    hits = index.search("read a file", backends=["git", "memory"]).hits
    assert hits
    assert {hit.record.backend for hit in hits} <= {"git", "memory"}
    assert index.search("read a file", backends=["nope"]).hits == []


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_semantic_query_ranks_current_time_first(tmp_path: Path, embedder: TextEmbedder, index_type: str) -> None:
    index = ToolIndex(OptimizerConfig(index_type=index_type), tmp_path, embedder)  # type: ignore[arg-type]
    index.update(CATALOGUE)
    result = index.search("what time is it in Tokyo right now", limit=3)
    assert result.mode == "hybrid"
    assert result.hits[0].record.name == "time_get_current_time"
    assert names(index, "download a web page as markdown")[0] == "fetch_fetch"
    assert names(index, "time", backends=["time"], limit=1)[0].startswith("time_")


def test_multi_intent_request_finds_each_need(index: ToolIndex) -> None:
    index.update(CATALOGUE)
    top = names(index, "fetch the page at example.com, then save it to a file on disk", limit=3)
    assert "fetch_fetch" in top
    assert "fs_write_file" in top


def test_stats_report_tools_backends_model_and_disk_size(index: ToolIndex) -> None:
    index.update(CATALOGUE)
    stats = index.stats()
    assert stats["tools"] == len(CATALOGUE)
    assert stats["backends"] == 5
    assert stats["model"] == "all-MiniLM-L6-v2"
    assert stats["size_on_disk_bytes"] > len(CATALOGUE) * 384 * 4


def test_count_tokens_uses_the_model_tokenizer_without_truncation() -> None:
    assert count_tokens("") == 0
    assert count_tokens("what time is it") == 4
    assert count_tokens("word " * 1000) == 1000


def test_answer_tokens_add_up_to_the_whole_answers_count() -> None:
    """find_tool's token figure, from counts kept per tool, equals tokenizing the whole result list."""
    odd = ToolRecord(
        name="odd_tool",
        backend="b",
        description='Quotes "like this", a tab\there, ünïcødé, 東京, emoji 🚀 and a \\ backslash.',
        input_schema={"type": "object", "properties": {"q": {"type": "string", "pattern": "^[a-z]+$"}}},
    )
    counter = AnswerTokens()
    for records in ([], CATALOGUE[:1], CATALOGUE[:8], [odd, *CATALOGUE[:3]]):
        parts = [tool_json(record) for record in records]
        results = [{**part, "score": 0.1234 * (i + 1), "used_with": "x_y"} for i, part in enumerate(parts)]
        expected = count_tokens(json.dumps(results, ensure_ascii=False))
        assert counter.count(results, parts) == expected  # counted, kept
        assert counter.all_known(parts)
        assert counter.count(results, parts) == expected  # from what was kept


def test_answer_tokens_keep_at_most_max_tools() -> None:
    counter = AnswerTokens(max_tools=2)
    assert counter.warm((tool_json(record) for record in CATALOGUE), stop=lambda: False) == 2
    assert not counter.all_known([tool_json(record) for record in CATALOGUE[:3]])
    parts = [tool_json(record) for record in CATALOGUE[:3]]
    counter.count([{**part, "score": 1.0} for part in parts], parts)
    assert counter.all_known(parts[1:]) and not counter.all_known(parts[:1])  # the oldest made room


def test_answer_tokens_warmed_in_batches_count_as_the_whole_answer() -> None:
    records = [
        ToolRecord(f"tool_{i}", "b", f"Tool number {i}: does thing {i}, «vite»") for i in range(COUNT_BATCH + 40)
    ]
    parts = [tool_json(record) for record in records]
    counter = AnswerTokens()
    assert counter.warm(iter(parts), stop=lambda: False) == len(parts)
    assert counter.all_known(parts)
    shown = parts[COUNT_BATCH - 2 : COUNT_BATCH + 2]  # across the batches' boundary
    results = [{**part, "score": 0.5} for part in shown]
    assert counter.count(results, shown) == count_tokens(json.dumps(results, ensure_ascii=False))
    assert AnswerTokens().warm(iter(parts), stop=lambda: True) == 0


def test_searches_keep_answering_while_an_update_runs(tmp_path: Path, embedder: TextEmbedder) -> None:
    index = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    index.update(CATALOGUE)
    bigger = CATALOGUE + [
        ToolRecord(f"extra_tool_{i}", "extra", f"Extra tool number {i} that does thing {i}") for i in range(200)
    ]
    updater = threading.Thread(target=index.update, args=(bigger,))
    updater.start()
    answers = 0
    while updater.is_alive():
        assert names(index, "what time is it in Tokyo right now")[0] == "time_get_current_time"
        answers += 1
    updater.join()
    assert answers > 0
    assert len(index) == len(bigger)


def test_concurrent_searches_share_one_model_safely(index: ToolIndex) -> None:
    index.update(CATALOGUE)
    failures: list[BaseException] = []

    def ask() -> None:
        try:
            for _ in range(20):
                assert names(index, "what time is it in Tokyo right now")[0] == "time_get_current_time"
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            failures.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


class _CountingEmbedder:
    """The real model, counting the texts it is asked to embed as queries."""

    def __init__(self, inner: TextEmbedder) -> None:
        self.inner = inner
        self.queries: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_queries(self, texts: Any) -> Any:
        self.queries.extend(texts)
        return self.inner.encode_queries(texts)


def test_a_repeated_query_is_not_embedded_again_and_the_cache_is_bounded(
    tmp_path: Path, embedder: TextEmbedder
) -> None:
    counting = _CountingEmbedder(embedder)
    index = ToolIndex(OptimizerConfig(query_cache_size=2), tmp_path, counting)  # type: ignore[arg-type]
    index.update(CATALOGUE)
    first = names(index, "what time is it in Tokyo right now")
    assert names(index, "what time is it in Tokyo right now") == first
    assert counting.queries == ["what time is it in Tokyo right now"]
    names(index, "read a file")
    names(index, "show the git commit logs")  # the Tokyo query is now the least recent: dropped
    names(index, "what time is it in Tokyo right now")
    assert counting.queries.count("what time is it in Tokyo right now") == 2
    uncached = ToolIndex(OptimizerConfig(query_cache_size=0), tmp_path, counting)  # type: ignore[arg-type]
    uncached.update(CATALOGUE)
    counting.queries.clear()
    names(uncached, "read a file")
    names(uncached, "read a file")
    assert counting.queries == ["read a file", "read a file"]


def test_intent_mean_gives_a_multi_intent_request_its_intents_mean_instead_of_an_embedding(
    tmp_path: Path, embedder: TextEmbedder
) -> None:
    request = "fetch the page at example.com, then save it to a file on disk"
    intents = ranking.split_intents(request)
    counting = _CountingEmbedder(embedder)
    config = OptimizerConfig(whole_request_vector="intent_mean", query_cache_size=0)
    index = ToolIndex(config, tmp_path, counting)  # type: ignore[arg-type]
    index.update(CATALOGUE)
    top = names(index, request, limit=3)
    assert counting.queries == intents  # the request itself never reaches the model
    assert "fetch_fetch" in top and "fs_write_file" in top
    counting.queries.clear()
    names(index, "read a file")
    assert counting.queries == ["read a file"]  # a single need is embedded as always


def test_intent_mean_weighs_intents_by_words_and_is_a_unit_vector() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    mean = ranking.intent_mean(vectors, ["one two three", "four"])
    np.testing.assert_allclose(mean, np.array([3.0, 1.0]) / np.sqrt(10.0), rtol=1e-6)
    opposite = ranking.intent_mean(np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32), ["a b", "c d"])
    assert not np.isnan(opposite).any()
