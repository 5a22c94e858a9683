"""A usage-history sync costs what changed: a journal line, not a rewrite of the whole history.

A real `vmcp serve` over a real demo backend, driven by the SDK's client, on an index_dir holding a history past
`SMALL_HISTORY`: what it learns is appended to `usage.json.journal` (the snapshot untouched), survives a SIGKILL
and a torn last line, and the restarted gateway adds to it. Real files for the rest: compaction keeps every
entry, the earlier one-line layout is read and migrated, and a sync never copies the whole graph under its lock
(the lock the event loop takes for every call it learns from).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, stop_process, write_config
from vmcp_opt.optimizer import usage_files
from vmcp_opt.optimizer.usage import UsageGraph
from vmcp_opt.optimizer.usage_files import SMALL_HISTORY, FileUsageHistory, journal_path

TORN = "incomplete line"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def seeded(path: Path, tools: int = 3000) -> UsageGraph:
    """A history past `SMALL_HISTORY`, written by the gateway's own store: every tool with five companions."""
    graph = UsageGraph()
    for n in range(tools):
        graph.record_task([f"seed_{n}", *(f"seed_{(n + k) % tools}" for k in range(1, 6))])
    history = FileUsageHistory(path)
    history.load()
    history.save(graph)
    assert path.stat().st_size > SMALL_HISTORY
    return graph


def pair(graph: UsageGraph, first: str, second: str) -> bool:
    return second in graph.to_json()["together"].get(first, {})


async def wait_until(check: Callable[[], bool]) -> None:
    with anyio.fail_after(30):
        while not check():  # noqa: ASYNC110 - polling files another process writes
            await anyio.sleep(0.1)


async def call_ok(client: Client, name: str, arguments: dict[str, Any]) -> None:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, result.content


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_killed_gateway_keeps_its_last_sync_and_a_restart_adds_to_the_journal(tmp_path: Path) -> None:
    index_dir = tmp_path / "indexes"
    path = index_dir / "usage.json"
    seed = seeded(path).to_json()
    snapshot = path.read_bytes()
    optimizer = {"enabled": True, "index_dir": str(index_dir), "usage_sync_interval": 0.2}
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "optimizer": optimizer})
    with running_gateway(config) as gateway:
        async with Client(gateway.url, mode="legacy") as client:
            await call_ok(client, "notes_whoami", {})
            await call_ok(client, "notes_slow_echo", {"message": "hi", "seconds": 0})
            await wait_until(lambda: pair(UsageGraph.read(path), "notes_whoami", "notes_slow_echo"))
        gateway.proc.kill()  # no way out: only what the periodic sync wrote survives
        gateway.proc.wait()
    assert path.read_bytes() == snapshot  # the sync appended to the journal; the snapshot was not rewritten
    with journal_path(path).open("a", encoding="utf-8") as journal:
        journal.write('{"tasks":{"notes_whoami":7')  # a gateway killed mid-append leaves a torn last line

    with running_gateway(config) as gateway:
        async with Client(gateway.url, mode="legacy") as client:
            await call_ok(client, "notes_whoami", {})
            await call_ok(client, "notes_save_note", {"title": "t", "text": "x"})
        stop_process(gateway.proc)
    log = gateway.output()
    assert log.count(TORN) == 1, log  # one warning, at load; the sync after it cuts the line quietly
    assert "Traceback" not in log
    kept = UsageGraph.read(path).to_json()
    assert pair(UsageGraph.read(path), "notes_whoami", "notes_slow_echo")  # learned before the kill
    assert pair(UsageGraph.read(path), "notes_whoami", "notes_save_note")  # learned after the restart
    assert kept["tasks"]["notes_whoami"] == 2  # the torn line's 7 never counted
    for tool, count in seed["tasks"].items():
        assert kept["tasks"][tool] == count
    assert all(kept["together"][tool] == companions for tool, companions in seed["together"].items())
    lines = journal_path(path).read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line) for line in lines)  # the torn line cut, not glued to the next
    assert len(kept["tasks"]) == len(seed["tasks"]) + 3


def test_a_torn_last_journal_line_is_skipped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "usage.json"
    graph = seeded(path)
    history = FileUsageHistory(path)
    graph = history.load()
    graph.record_task(["a", "b"])
    history.save(graph)
    with journal_path(path).open("a", encoding="utf-8") as journal:
        journal.write('{"tasks":{"a":5},"together":{"a":{"c"')
    caplog.set_level(logging.WARNING)
    again = FileUsageHistory(path)
    loaded = again.load()
    assert loaded.to_json() == graph.to_json()
    loaded.record_task(["a", "d"])
    again.save(loaded)
    assert caplog.text.count(TORN) == 1
    assert UsageGraph.read(path).to_json() == loaded.to_json()
    assert loaded.to_json()["tasks"]["a"] == 2


def test_compaction_keeps_every_entry_and_bounds_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_files, "JOURNAL_RATIO", 0.002)  # a compaction every few syncs
    path = tmp_path / "usage.json"
    writer, reader = FileUsageHistory(path), FileUsageHistory(path)
    graph = seeded(path)
    graph = writer.load()
    other = reader.load()
    journals: list[int] = []
    for n in range(40):
        graph.record_task([f"new_{n}", f"seed_{n}"])
        writer.save(graph)
        journals.append(journal_path(path).stat().st_size if journal_path(path).exists() else 0)
        if n % 7 == 0:  # a second gateway on the directory, adding its own and reading across compactions
            other.record_task([f"other_{n}", "seed_0"])
            reader.save(other)
    writer.save(graph)
    reader.save(other)
    assert 0 in journals and max(journals) > 0  # both: appended, then folded into the snapshot
    assert max(journals) <= 0.002 * path.stat().st_size * 2
    whole = UsageGraph.read(path).to_json()
    assert graph.to_json() == whole == other.to_json()
    assert all(whole["tasks"][f"new_{n}"] == 1 and whole["together"][f"new_{n}"] == {f"seed_{n}": 1} for n in range(40))
    assert whole["together"]["seed_0"]["other_35"] == 1
    assert len(whole["tasks"]) == 3000 + 40 + 6


def test_a_history_of_the_earlier_layout_is_read_and_migrated(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    earlier = seeded(tmp_path / "seed.json").to_json()
    path.write_text(json.dumps(earlier, separators=(",", ":")), encoding="utf-8")  # one line, as it was written
    history = FileUsageHistory(path)
    graph = history.load()
    assert graph.to_json() == earlier
    graph.record_task(["a", "b"])
    history.save(graph)
    migrated = json.loads(path.read_text(encoding="utf-8"))  # still one JSON object: the earlier loader reads it
    assert UsageGraph.from_json(migrated).to_json() == graph.to_json()
    assert not journal_path(path).exists()
    graph.record_task(["a", "c"])
    history.save(graph)
    assert journal_path(path).exists()  # now of this layout: later syncs append
    assert UsageGraph.read(path).to_json() == graph.to_json()


def test_a_sync_never_copies_the_whole_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop takes the graph's lock for every call it learns from: a sync holds it only for what
    changed (a copy of the whole graph under it made the loop wait ~50 ms at a million pairs)."""
    path = tmp_path / "usage.json"
    seeded(path)
    history = FileUsageHistory(path)
    graph = history.load()

    def whole_copy(self: UsageGraph) -> dict[str, Any]:
        raise AssertionError("a sync copied the whole graph")

    monkeypatch.setattr(UsageGraph, "to_json", whole_copy)
    for n in range(5):
        graph.record_task([f"new_{n}", "seed_1"])
        history.save(graph)
    assert graph.companions("new_4") == {"seed_1": pytest.approx(1 / 3)}
