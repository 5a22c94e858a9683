"""A usage-history compaction keeps every count, and the graph it builds holds nothing the garbage collector walks.

A real `vmcp serve` over a real demo backend, driven by the SDK's client, on an index_dir whose journal is past
`JOURNAL_RATIO` of its snapshot: the gateway's first sync that adds something folds it into a new snapshot, and a
restarted gateway adds to that one; the file ends with the seed, the journal and both runs' calls, each once. Real
files for the rest: the counts a load, a journal read and a compaction hand the graph are plain dicts the collector
does not track (a dict of Counters at a million pairs made a compaction set off a full collection that walked them
with the GIL held, the event loop waiting ~55-150 ms: optimizer/usage.py's note on `Kept`).
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, stop_process, write_config
from tests.test_usage31 import seeded
from vmcp_opt.optimizer import usage_files
from vmcp_opt.optimizer.usage import UsageGraph
from vmcp_opt.optimizer.usage_files import JOURNAL_RATIO, FileUsageHistory, journal_path


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def generation(path: Path) -> str:
    return str(json.loads(path.read_text(encoding="utf-8").split("\n", 1)[0] + "}}")["generation"])


def tracked_counts(graph: UsageGraph) -> list[str]:
    """The graph's count dicts the garbage collector tracks (and so walks at every full collection)."""
    whole = graph.to_json()  # copies: the graph's own dicts are looked at below
    tracked = ["tasks"] if gc.is_tracked(graph._tasks) else []
    tracked += [tool for tool in whole["together"] if gc.is_tracked(graph._together[tool])]
    return tracked


def paired(path: Path) -> bool:
    return "notes_slow_echo" in UsageGraph.read(path).to_json()["together"].get("notes_whoami", {})


async def wait_until(check: Callable[[], bool]) -> None:
    with anyio.fail_after(30):
        while not check():  # noqa: ASYNC110 - polling files another process writes
            await anyio.sleep(0.1)


async def call_ok(client: Client, name: str, arguments: dict[str, Any]) -> None:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, result.content


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_gateway_compacts_a_long_journal_and_a_restart_adds_to_the_new_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_dir = tmp_path / "indexes"
    path = index_dir / "usage.json"
    seeded(path, tools=1000)
    with monkeypatch.context() as patch:  # a journal past the ratio, written as gateways append it
        patch.setattr(usage_files, "JOURNAL_RATIO", 100.0)
        writer = FileUsageHistory(path)
        graph = writer.load()
        for n in range(1500):
            graph.record_task([f"journal_{n}", f"seed_{n % 1000}"])
        writer.save(graph)
    assert journal_path(path).stat().st_size > JOURNAL_RATIO * path.stat().st_size
    before, old_generation = UsageGraph.read(path).to_json(), generation(path)

    optimizer = {"enabled": True, "index_dir": str(index_dir), "usage_sync_interval": 0.2}
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "optimizer": optimizer})
    with running_gateway(config) as gateway:
        async with Client(gateway.url, mode="legacy") as client:
            await call_ok(client, "notes_whoami", {})
            await call_ok(client, "notes_slow_echo", {"message": "hi", "seconds": 0})
            await wait_until(lambda: generation(path) != old_generation and paired(path))  # compacted, then synced
        gateway.proc.kill()  # what the periodic syncs wrote is what survives
        gateway.proc.wait()
    compacted = generation(path)
    assert not journal_path(path).exists() or journal_path(path).stat().st_size < JOURNAL_RATIO * path.stat().st_size

    with running_gateway(config) as gateway:
        async with Client(gateway.url, mode="legacy") as client:
            await call_ok(client, "notes_whoami", {})
            await call_ok(client, "notes_save_note", {"title": "t", "text": "x"})
        stop_process(gateway.proc)
    assert "Traceback" not in gateway.output()

    after = UsageGraph.read(path).to_json()
    assert generation(path) == compacted  # the restart appended to the compaction's snapshot
    learned = {"notes_whoami": 2, "notes_slow_echo": 1, "notes_save_note": 1}
    assert after["tasks"] == {**before["tasks"], **learned}
    assert after["together"] == {
        **before["together"],
        "notes_whoami": {"notes_slow_echo": 1, "notes_save_note": 1},
        "notes_slow_echo": {"notes_whoami": 1},
        "notes_save_note": {"notes_whoami": 1},
    }


def test_the_counts_a_compaction_and_a_journal_read_hand_the_graph_are_untracked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "usage.json"
    seeded(path)
    writer, reader = FileUsageHistory(path), FileUsageHistory(path)
    graph = writer.load()
    assert tracked_counts(graph) == []  # as loaded from the snapshot
    graph.record_task(["new_a", "seed_1"])
    writer.save(graph)  # a journal line
    other = reader.load()  # the snapshot and the journal
    other.record_task(["other_a", "seed_2"])
    reader.save(other)
    assert journal_path(path).exists()
    assert tracked_counts(other) == []

    monkeypatch.setattr(usage_files, "JOURNAL_RATIO", 0.0)
    graph.record_task(["new_b", "seed_3"])
    writer.save(graph)  # a compaction, adding what the other gateway journalled
    assert not journal_path(path).exists()
    assert tracked_counts(graph) == []
    assert graph.to_json() == UsageGraph.read(path).to_json()
    assert graph.to_json()["together"]["seed_2"]["other_a"] == 1

    graph.record_task(["seed_3", "new_c"])  # learned on the loop after the compaction: still plain counts
    assert tracked_counts(graph) == []


def test_counts_handed_in_as_counters_are_kept_untracked() -> None:
    """As the Redis store hands them in (`of_counts`, every merge): copied into plain dicts, not Counters."""
    graph = UsageGraph.of_counts(Counter({"a": 2, "b": 1}), {"a": Counter({"b": 1}), "b": Counter({"a": 1})})
    assert tracked_counts(graph) == []
    assert graph.companions("a") == {"b": 1 / 4}


def test_the_counts_read_from_redis_are_built_untracked() -> None:
    """Each Redis sync reads the whole history: built as Counters, a million pairs were ~40,000 tracked containers
    at every sync before the graph copied them into plain dicts."""
    from vmcp_opt.shared.usage_history import _bounded_counts

    tasks = {f"tool_{n}".encode(): str(n + 1).encode() for n in range(100)}
    pairs = {json.dumps([f"tool_{n}", f"tool_{(n + 1) % 100}"]).encode(): b"2" for n in range(100)}
    counted_tasks, together = _bounded_counts(tasks, pairs)
    assert counted_tasks["tool_0"] == 1 and together["tool_0"] == {"tool_1": 2}
    assert not gc.is_tracked(counted_tasks)
    assert not [tool for tool, counts in together.items() if gc.is_tracked(counts)]
