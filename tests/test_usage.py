"""Tools used together (optimizer/usage.py): tasks, counts, companions, persistence; and how the optimizer
front records and saves them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmcp_opt.config import VmcpConfig
from vmcp_opt.optimizer import file_lock, usage
from vmcp_opt.optimizer.metatools import OptimizerFront
from vmcp_opt.optimizer.usage import (
    KEPT_ASIDE,
    MAX_TASK_TOOLS,
    UsageGraph,
    UsageRecorder,
    companion_scores,
)
from vmcp_opt.optimizer.usage_files import FileUsageHistory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Client:
    """A stand-in for a caller's id: anything hashable."""


def recorder(window: float = 60.0) -> tuple[UsageRecorder, Clock]:
    clock = Clock()
    return UsageRecorder(UsageGraph(), window, clock=clock), clock


def test_calls_within_the_window_form_one_task() -> None:
    rec, clock = recorder(window=60)
    client = Client()
    rec.tool_used(client, "search_flights")
    clock.now += 59
    rec.tool_used(client, "convert_currency")
    assert rec.graph.to_json()["tasks"] == {"search_flights": 1, "convert_currency": 1}
    assert rec.graph.companions("search_flights") == {"convert_currency": pytest.approx(1 / 3)}


def test_a_call_after_the_window_starts_a_new_task() -> None:
    rec, clock = recorder(window=60)
    client = Client()
    rec.tool_used(client, "search_flights")
    clock.now += 61
    rec.tool_used(client, "convert_currency")
    assert rec.graph.companions("search_flights") == {}
    assert rec.graph.stats() == {"tools": 2, "pairs": 0, "tool_uses": 2}


def test_the_window_runs_from_the_previous_call_not_the_first() -> None:
    rec, clock = recorder(window=60)
    client = Client()
    for tool in ("a", "b", "c"):
        rec.tool_used(client, tool)
        clock.now += 50  # 100 s from a to c, never more than 60 between two calls
    assert set(rec.graph.companions("a")) == {"b", "c"}


def test_a_tool_repeated_in_one_task_counts_once() -> None:
    rec, _clock = recorder()
    client = Client()
    for tool in ("read_file", "write_file", "read_file", "read_file"):
        rec.tool_used(client, tool)
    assert rec.graph.to_json() == {
        "version": 1,
        "tasks": {"read_file": 1, "write_file": 1},
        "together": {"read_file": {"write_file": 1}, "write_file": {"read_file": 1}},
    }


def test_two_clients_calling_at_once_are_two_tasks() -> None:
    rec, _clock = recorder()
    one, two = Client(), Client()
    rec.tool_used(one, "a")
    rec.tool_used(two, "b")
    rec.tool_used(one, "c")
    assert set(rec.graph.companions("a")) == {"c"}
    assert rec.graph.companions("b") == {}


def test_a_task_holds_at_most_max_task_tools_then_a_new_one_starts() -> None:
    rec, _clock = recorder()
    client = Client()
    for number in range(MAX_TASK_TOOLS + 1):
        rec.tool_used(client, f"t{number}")
    assert len(rec.graph.companions("t0")) == MAX_TASK_TOOLS - 1
    assert rec.graph.companions(f"t{MAX_TASK_TOOLS}") == {}


def test_the_recorder_forgets_the_least_recently_active_client_past_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(usage, "MAX_LIVE_CLIENTS", 2)
    rec, _clock = recorder()
    rec.tool_used("caller-1", "a")
    rec.tool_used("caller-2", "x")
    rec.tool_used("caller-3", "y")  # caller-1's open task is forgotten
    rec.tool_used("caller-1", "b")
    assert rec.graph.companions("a") == {}
    rec.tool_used("caller-3", "z")  # caller-3 is still open
    assert set(rec.graph.companions("y")) == {"z"}


def test_record_task_counts_each_distinct_tool_and_each_pair_once() -> None:
    graph = UsageGraph()
    graph.record_task(["a", "b", "a", "c"])
    graph.record_task(["a", "b"])
    assert graph.to_json()["tasks"] == {"a": 2, "b": 2, "c": 1}
    assert graph.to_json()["together"]["a"] == {"b": 2, "c": 1}
    assert graph.stats() == {"tools": 3, "pairs": 3, "tool_uses": 5}
    assert len(graph) == 3


def test_companion_probability_is_together_over_tasks_plus_two() -> None:
    graph = UsageGraph()
    for _ in range(3):
        graph.record_task(["a", "b"])
    graph.record_task(["a"])
    # a was in 4 tasks, 3 of them with b: 3 / (4 + 2); b was in 3, all with a: 3 / (3 + 2).
    assert graph.companions("a") == {"b": pytest.approx(0.5)}
    assert graph.companions("b") == {"a": pytest.approx(0.6)}
    assert graph.companions("never_seen") == {}


def test_companion_scores_weigh_by_score_and_rank() -> None:
    graph = UsageGraph()
    graph.record_task(["a", "x"])  # P(x | a) = 1/3
    graph.record_task(["b", "x"])  # P(x | b) = 1/3
    boost = companion_scores([("a", 0.9), ("b", 0.6), ("c", 0.0)], graph, seeds=8, weight=2.0)
    assert boost["x"] == (pytest.approx(2.0 * 0.9 / 3 / 1 + 2.0 * 0.6 / 3 / 2), "a")  # a added the most
    assert "a" not in boost and "c" not in boost  # only companions of the seeds are raised
    assert companion_scores([("a", 0.9), ("b", 0.6)], graph, seeds=1, weight=1.0)["x"] == (pytest.approx(0.3), "a")
    # "Used with" names the seed that added the most, not necessarily the best-ranked one.
    for _ in range(6):
        graph.record_task(["b", "y"])  # P(y | b) = 6/9 (b is in 7 tasks)
    graph.record_task(["a", "y"])  # P(y | a) = 1/4 (a is in 2 tasks now)
    boost = companion_scores([("a", 1.0), ("b", 0.9)], graph, seeds=8, weight=1.0)
    assert boost["y"] == (pytest.approx(1.0 * 1 / 4 + 0.9 * 6 / 9 / 2), "b")


def test_the_version_moves_on_every_change_only() -> None:
    graph = UsageGraph()
    start = graph.version
    graph.companions("a")
    graph.stats()
    assert graph.version == start
    graph.record_task(["a", "b"])
    assert graph.version > start


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    graph = UsageGraph()
    graph.record_task(["a", "b", "c"])
    graph.record_task(["b", "c"])
    path = tmp_path / "deeper" / "usage.json"
    graph.save(path)
    assert UsageGraph.load(path).to_json() == graph.to_json()
    # No temporary file left behind (the lock file stays: removing it would race with another saver).
    assert sorted(p.name for p in path.parent.iterdir()) == [".usage.json.lock", "usage.json"]


def test_gateways_sharing_a_history_add_to_it_instead_of_overwriting(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    first, second = UsageGraph.load(path), UsageGraph.load(path)
    first.record_task(["flights", "currency"])
    second.record_task(["flights", "weather"])
    first.save(path)
    second.save(path)
    assert UsageGraph.read(path).to_json()["together"] == {
        "flights": {"currency": 1, "weather": 1},
        "currency": {"flights": 1},
        "weather": {"flights": 1},
    }
    assert second.companions("flights").keys() == {"currency", "weather"}  # it ranks with both now
    second.save(path)  # nothing new: saving again adds nothing
    assert UsageGraph.read(path).stats() == {"tools": 3, "pairs": 2, "tool_uses": 4}
    first.record_task(["flights", "currency"])
    first.save(path)
    assert UsageGraph.read(path).to_json()["tasks"] == {"flights": 3, "currency": 2, "weather": 1}
    assert first.to_json() == UsageGraph.read(path).to_json()


def test_a_history_cleared_under_a_running_gateway_keeps_only_newer_counts(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    graph = UsageGraph()
    graph.record_task(["old", "pair"])
    graph.save(path)
    path.unlink()  # vmcp index usage --clear
    graph.record_task(["new", "pair"])
    graph.save(path)
    assert UsageGraph.read(path).to_json()["tasks"] == {"new": 1, "pair": 1}
    assert graph.companions("old") == {}


def test_a_failed_save_keeps_the_new_counts_for_the_next_one(tmp_path: Path) -> None:
    graph = UsageGraph()
    graph.record_task(["a", "b"])
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("", encoding="utf-8")
    with pytest.raises(OSError):
        graph.save(blocked / "usage.json")
    graph.save(tmp_path / "usage.json")
    assert UsageGraph.read(tmp_path / "usage.json").to_json()["tasks"] == {"a": 1, "b": 1}


def test_load_of_a_missing_file_is_an_empty_graph(tmp_path: Path) -> None:
    assert len(UsageGraph.load(tmp_path / "usage.json")) == 0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"version": 0, "tasks": {}, "together": {}}, "'version'"),
        ({"version": 1, "tasks": {"a": 2**53 + 1}, "together": {}}, "'tasks.a'"),
        ({"version": 1, "tasks": [], "together": {}}, "'tasks'"),
        ({"version": 1, "tasks": {"a": -1}, "together": {}}, "'tasks.a'"),
        ({"version": 1, "tasks": {"a": "3"}, "together": {}}, "'tasks.a'"),
        ({"version": 1, "tasks": {"a": True}, "together": {}}, "'tasks.a'"),
        ({"version": 1, "tasks": {}, "together": []}, "'together'"),
        ({"version": 1, "tasks": {}, "together": {"a": {"b": 1.5}}}, "'together.a.b'"),
    ],
)
def test_from_json_rejects_bad_data_naming_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"field {field}"):
        UsageGraph.from_json(data)


def test_a_history_from_a_newer_release_says_so() -> None:
    with pytest.raises(ValueError, match=r"written by a newer vmcp-opt \(format 2; this release reads 1\)"):
        UsageGraph.from_json({"version": 2, "tasks": {}, "together": {}})


@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": 1, "tasks": [], "together": {}}'])
def test_an_unreadable_file_is_kept_aside_and_the_graph_starts_empty(tmp_path: Path, content: str) -> None:
    path = tmp_path / "usage.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError):
        UsageGraph.read(path)
    assert path.exists()  # reading touches nothing
    assert len(UsageGraph.load(path)) == 0
    assert not path.exists()
    (aside,) = tmp_path.glob("usage.json.corrupt-*")
    assert aside.read_text(encoding="utf-8") == content


def test_unreadable_files_are_each_kept_aside_the_newest_few_only(tmp_path: Path) -> None:
    """A second bad file never overwrites the copy of the first."""
    path = tmp_path / "usage.json"
    contents = [f'{{"version": 1, "tasks": {{"t": -{n}}}, "together": {{}}}}' for n in range(1, 1 + KEPT_ASIDE + 2)]
    for content in contents:
        path.write_text(content, encoding="utf-8")
        UsageGraph.load(path)
    kept = sorted(tmp_path.glob("usage.json.corrupt-*"), key=lambda p: p.stat().st_mtime_ns)
    assert [p.read_text(encoding="utf-8") for p in kept] == contents[-KEPT_ASIDE:]


def test_a_saved_history_keeps_the_most_used_tools_and_their_most_frequent_companions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage, "MAX_TOOLS", 4)
    monkeypatch.setattr(usage, "MAX_COMPANIONS", 2)
    graph = UsageGraph()
    for _ in range(3):
        graph.record_task(["hub", "a", "b"])
    graph.record_task(["hub", "a", "c"])
    graph.record_task(["hub", "d"])
    graph.record_task(["e"])  # fewest tasks: beyond MAX_TOOLS once the others are counted
    graph.save(tmp_path / "usage.json")
    saved = json.loads((tmp_path / "usage.json").read_text(encoding="utf-8"))
    assert saved["tasks"] == {"hub": 5, "a": 4, "b": 3, "c": 1}  # c before d and e: ties by name
    assert saved["together"]["hub"] == {"a": 4, "b": 3}
    assert saved["together"]["a"] == {"hub": 4, "b": 3}
    assert all(len(companions) <= 2 for companions in saved["together"].values())
    assert "d" not in saved["together"] and "e" not in saved["together"]


def test_a_save_that_fails_mid_write_leaves_the_previous_file_and_no_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "usage.json"
    graph = UsageGraph()
    graph.record_task(["a", "b"])
    graph.save(path)
    before = path.read_text(encoding="utf-8")
    graph.record_task(["a", "c"])

    def disk_full(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(file_lock.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        graph.save(path)
    assert path.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".usage.json.lock", "usage.json"]


# --- the optimizer front: records through the recorder, saves when changed ---------------------------


def front(index_dir: Path, **optimizer: object) -> OptimizerFront:
    config = VmcpConfig.model_validate({"optimizer": {"enabled": True, "index_dir": str(index_dir), **optimizer}})
    return OptimizerFront(config)


def test_the_front_writes_its_history_on_close_and_only_when_it_changed(tmp_path: Path) -> None:
    optimizer = front(tmp_path)
    assert optimizer.usage is not None and optimizer.index.usage is optimizer.usage
    optimizer.close()
    assert not (tmp_path / "usage.json").exists()  # nothing learned, nothing written

    optimizer = front(tmp_path)
    client = Client()
    optimizer.tool_used(client, "a")
    optimizer.tool_used(client, "b")
    optimizer.close()
    saved = json.loads((tmp_path / "usage.json").read_text(encoding="utf-8"))
    assert saved["together"] == {"a": {"b": 1}, "b": {"a": 1}}
    optimizer.tool_used(client, "c")  # after close: not recorded, nothing left unsaved
    optimizer.close()
    assert json.loads((tmp_path / "usage.json").read_text(encoding="utf-8")) == saved

    again = front(tmp_path)
    assert again.usage is not None and again.usage.companions("a") == {"b": pytest.approx(1 / 3)}


def test_the_front_with_usage_off_records_and_writes_nothing(tmp_path: Path) -> None:
    optimizer = front(tmp_path, usage=False)
    assert optimizer.usage is None and optimizer.index.usage is None
    optimizer.tool_used(Client(), "a")
    optimizer.close()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_is_a_warning_and_the_next_one_retries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("", encoding="utf-8")
    optimizer = front(blocker)
    optimizer.tool_used(Client(), "a")
    with caplog.at_level(logging.WARNING):
        optimizer.save_usage()
    assert "could not save the usage history" in caplog.text
    optimizer.history = FileUsageHistory(tmp_path / "usage.json")
    optimizer.close()
    assert json.loads((tmp_path / "usage.json").read_text(encoding="utf-8"))["tasks"] == {"a": 1}


# --- `vmcp index usage` -------------------------------------------------------------------------------


def test_index_usage_prints_the_history_and_clear_deletes_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vmcp_opt.optimizer.index_cli import index_app

    runner = CliRunner()
    config = tmp_path / "vmcp.yaml"
    config.write_text(f"optimizer:\n  index_dir: {tmp_path}\n", encoding="utf-8")
    empty = runner.invoke(index_app, ["usage", "-c", str(config)])
    assert empty.exit_code == 0 and "no usage history yet" in empty.output

    graph = UsageGraph()
    graph.record_task(["search_flights", "convert_currency", "get_weather"])
    graph.record_task(["search_flights", "convert_currency"])
    graph.save(tmp_path / "usage.json")
    shown = runner.invoke(index_app, ["usage", "-c", str(config), "--top", "1"])
    assert shown.exit_code == 0, shown.output
    assert "3 tools used, 5 uses in tasks, 3 pairs used together" in shown.output
    assert "convert_currency │ search_flights │     2" in shown.output
    assert "get_weather │" not in shown.output  # --top 1

    (tmp_path / "usage.json").write_text("[]", encoding="utf-8")
    bad = runner.invoke(index_app, ["usage", "-c", str(config)])
    assert bad.exit_code == 1 and "unreadable usage history" in bad.output
    assert (tmp_path / "usage.json").exists()  # reported, left where it is

    cleared = runner.invoke(index_app, ["usage", "-c", str(config), "--clear"])
    assert cleared.exit_code == 0 and "deleted the usage history" in cleared.output
    assert not (tmp_path / "usage.json").exists()
    again = runner.invoke(index_app, ["usage", "-c", str(config), "--clear"])
    assert again.exit_code == 0 and "nothing to clear" in again.output


def test_index_usage_prints_a_long_path_on_one_line_whatever_the_terminal_width(tmp_path: Path) -> None:
    index_dir = tmp_path / ("a-directory-with-a-long-name-" * 6) / "indexes"
    config = tmp_path / "vmcp.yaml"
    config.write_text(f"optimizer:\n  index_dir: {index_dir}\n", encoding="utf-8")
    for columns in ("20", "80"):
        result = subprocess.run(
            [sys.executable, "-m", "vmcp_opt", "index", "usage", "--clear", "-c", str(config)],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": columns},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"no usage history at {index_dir / 'usage.json'}: nothing to clear"


def test_index_search_ranks_with_the_saved_history_like_find_tool(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vmcp_opt.optimizer.index_cli import index_app

    tools = [
        {"name": "flights_search", "backend": "flights", "description": "Search flights between two airports"},
        {"name": "money_convert", "backend": "money", "description": "Convert an amount between currencies"},
        {"name": "notes_save", "backend": "notes", "description": "Save a note"},
    ]
    catalogue = tmp_path / "tools.jsonl"
    catalogue.write_text("\n".join(json.dumps(tool) for tool in tools), encoding="utf-8")
    config = tmp_path / "vmcp.yaml"
    config.write_text(f"optimizer:\n  index_dir: {tmp_path}\n", encoding="utf-8")
    args = ["search", "flights to Lisbon", "-c", str(config), "--from-jsonl", str(catalogue), "--keyword"]
    runner = CliRunner()
    before = runner.invoke(index_app, args)
    assert before.exit_code == 0, before.output
    assert "money_convert" not in before.output  # nothing in the request matches it
    graph = UsageGraph()
    for _ in range(3):
        graph.record_task(["flights_search", "money_convert"])
    graph.save(tmp_path / "usage.json")
    after = runner.invoke(index_app, args)
    assert after.exit_code == 0, after.output
    assert after.output.index("flights_search") < after.output.index("money_convert")
    assert "(used with flights_search)" in after.output
    assert "notes_save" not in after.output
