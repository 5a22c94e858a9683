"""Score boosts after fusion (optimizer/boosts.py), through `ToolIndex.search`: tools used together with
the best results (a co-usage history) and tools that issue a value a result requires."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.embedding import TextEmbedder, load_embedder
from vmcp_opt.optimizer.index import ToolIndex
from vmcp_opt.optimizer.usage import UsageGraph

from .test_optimizer_index import CATALOGUE, _schema, names


@pytest.fixture(scope="module")
def embedder() -> Iterator[TextEmbedder]:
    yield load_embedder("all-MiniLM-L6-v2", progress=False)


def _with_history(tmp_path: Path, embedder: TextEmbedder, tasks: list[list[str]], **config: Any) -> ToolIndex:
    graph = UsageGraph()
    for task in tasks:
        graph.record_task(task)
    index = ToolIndex(OptimizerConfig(**config), tmp_path, embedder, usage=graph)
    index.update(CATALOGUE)
    return index


def test_a_tool_used_with_the_best_match_joins_the_results(tmp_path: Path, embedder: TextEmbedder) -> None:
    query = "download a web page as markdown"
    plain = ToolIndex(OptimizerConfig(), tmp_path / "plain", embedder)
    plain.update(CATALOGUE)
    cold = names(plain, query, limit=3)
    assert "git_git_commit" not in cold  # nothing in the request points at it
    index = _with_history(tmp_path / "warm", embedder, [["fetch_fetch", "git_git_commit"]] * 4)
    warm = index.search(query, limit=3).hits
    assert warm[0].record.name == "fetch_fetch"  # the match itself stays first
    assert warm[0].used_with is None
    assert (warm[1].record.name, warm[1].used_with) == ("git_git_commit", "fetch_fetch")


def test_companions_respect_the_backend_filter_and_off_switches(tmp_path: Path, embedder: TextEmbedder) -> None:
    tasks = [["fetch_fetch", "git_git_commit"]] * 4
    query = "download a web page as markdown"
    index = _with_history(tmp_path / "a", embedder, tasks)
    assert "git_git_commit" not in names(index, query, backends=["fetch", "fs"])
    no_weight = _with_history(tmp_path / "b", embedder, tasks, usage_weight=0.0)
    assert "git_git_commit" not in names(no_weight, query, limit=3)
    # A history naming tools the catalogue no longer has changes nothing.
    stale = _with_history(tmp_path / "c", embedder, [["fetch_fetch", "gone_tool"]] * 4)
    plain = ToolIndex(OptimizerConfig(), tmp_path / "d", embedder)
    plain.update(CATALOGUE)
    assert names(stale, query) == names(plain, query)


# The alarms demo backend (examples/backends/alarms_server.py): every alarm tool requires a token.
ALARMS = [
    ToolRecord(
        "alarms_get_user_token",
        "alarms",
        "Sign a user in with their username and password; returns the authentication token.",
        _schema(username="", password=""),
        original_name="get_user_token",
    ),
    ToolRecord(
        "alarms_delete_alarm",
        "alarms",
        "Cancel one of the signed-in user's alarms by its id.",
        _schema(token="", alarm_id=""),
        original_name="delete_alarm",
    ),
    ToolRecord(
        "alarms_add_alarm",
        "alarms",
        "Set an alarm clock for the signed-in user at a time; returns its alarm id.",
        _schema(token="", time=""),
        original_name="add_alarm",
    ),
]


def test_the_tool_issuing_a_required_token_follows_the_result_that_needs_it(
    tmp_path: Path, embedder: TextEmbedder
) -> None:
    query = "cancel my 7am alarm"
    index = ToolIndex(OptimizerConfig(), tmp_path / "on", embedder)
    index.update([*CATALOGUE, *ALARMS])
    hits = index.search(query, limit=2).hits
    # What was asked for stays first; what it needs comes next, saying what it supplies to which result.
    assert [hit.record.name for hit in hits] == ["alarms_delete_alarm", "alarms_get_user_token"]
    assert hits[0].supplies is None
    assert hits[1].supplies == ("alarms_delete_alarm", "token")
    assert hits[1].score < hits[0].score

    off = ToolIndex(OptimizerConfig(prerequisite_weight=0.0), tmp_path / "off", embedder)
    off.update([*CATALOGUE, *ALARMS])
    assert "alarms_get_user_token" not in names(off, query, limit=2)
    assert all(hit.supplies is None for hit in off.search(query).hits)


def test_a_result_that_needs_no_issued_value_raises_nothing(tmp_path: Path, embedder: TextEmbedder) -> None:
    index = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    index.update([*CATALOGUE, *ALARMS])
    hits = index.search("what time is it in Tokyo", limit=2).hits
    assert [hit.record.name for hit in hits] == ["time_get_current_time", "time_convert_time"]
