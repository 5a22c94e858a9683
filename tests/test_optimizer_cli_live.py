"""Optimizer commands against a running gateway and live backends: `vmcp index usage --clear` under a real
`vmcp serve` (it drops what it learned, and its own saves do not write it back), and `vmcp validate --connect`
on pinned tool names the backends do not serve.

Real processes throughout: the gateway, the demo notes backend and the time server, the SDK's client, the
`vmcp` command. Files shared by gateways on one index directory: two `FileUsageHistory`s on real files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, running_gateways, stop_process, write_config
from tests.test_usage_gateway import COMPANION, call_ok, find_answer, usage_config, wait_for_vectors
from vmcp_opt.cli_config import unknown_pinned
from vmcp_opt.config import VmcpConfig
from vmcp_opt.optimizer.usage import UsageGraph
from vmcp_opt.optimizer.usage_files import FileUsageHistory
from vmcp_opt.probe import connect_once

CLEARED = "was cleared (vmcp index usage --clear)"
# Seconds a gateway gets to do what it does on its own clock (a sync every 0.5 s here).
WAIT = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command; a wide terminal, so that each message is one line."""
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=120, env=env
    )


def usage_file(index_dir: Path) -> dict[str, Any] | None:
    path = index_dir / "usage.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Until `condition()` holds (a gateway syncs on its own clock); fails naming `what`."""
    try:
        with anyio.fail_after(WAIT):
            while not condition():  # noqa: ASYNC110 - polling files and a log another process writes
                await anyio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"not within {WAIT} s: {what}")


async def learn_a_task(gateway: Gateway) -> dict[str, Any]:
    """One client task (a note saved, then the time asked) and the companion find_tool then shows."""
    async with Client(gateway.url, mode="legacy") as client:
        await wait_for_vectors(client)
        assert COMPANION not in [tool["name"] for tool in await find_answer(client)]
        await call_ok(client, "notes_save_note", {"title": "t", "text": "x"})
        await call_ok(client, COMPANION, {"timezone": "Asia/Tokyo"})
        shown = {tool["name"]: tool for tool in await find_answer(client)}
    assert shown[COMPANION]["used_with"] == "notes_save_note"
    return shown


async def names_found(gateway: Gateway) -> dict[str, str | None]:
    """find_tool's answer in a new session: each tool's `used_with` (None when the request alone ranked it)."""
    async with Client(gateway.url, mode="legacy") as client:
        return {tool["name"]: tool.get("used_with") for tool in await find_answer(client)}


# --- `vmcp index usage --clear` under a running gateway -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_running_gateway_drops_a_cleared_history_and_never_writes_it_back(tmp_path: Path) -> None:
    index_dir = tmp_path / "indexes"
    config = write_config(tmp_path, usage_config(index_dir, usage_sync_interval=0.5))
    with running_gateway(config) as gateway:
        await learn_a_task(gateway)
        learned = {
            "version": 1,
            "tasks": {"notes_save_note": 1, COMPANION: 1},
            "together": {"notes_save_note": {COMPANION: 1}, COMPANION: {"notes_save_note": 1}},
        }
        await wait_until(lambda: usage_file(index_dir) == learned, "the gateway saved what it learned")

        cleared = vmcp("index", "usage", "--clear", "-c", str(config))
        assert cleared.returncode == 0, cleared.stderr
        assert cleared.stdout.startswith(f"deleted the usage history {index_dir / 'usage.json'}; a running gateway ")
        assert "within optimizer.usage_sync_interval, 0.5 s" in cleared.stdout
        await wait_until(lambda: CLEARED in gateway.output(), "the gateway noticed the clear")

        found = await names_found(gateway)
        assert COMPANION not in found  # no boost from the cleared history: the request alone ranks
        assert next(iter(found)) == "notes_save_note" and not any(found.values())
        # What the same client does next is a new task: nothing pairs with the tools it used before the clear.
        async with Client(gateway.url, mode="legacy") as client:
            await call_ok(client, "notes_whoami", {})
            await call_ok(client, "notes_slow_echo", {"message": "hi", "seconds": 0})
        after_clear = {
            "version": 1,
            "tasks": {"notes_whoami": 1, "notes_slow_echo": 1},
            "together": {"notes_whoami": {"notes_slow_echo": 1}, "notes_slow_echo": {"notes_whoami": 1}},
        }
        await wait_until(lambda: usage_file(index_dir) == after_clear, "the gateway saved what it learned since")
        stop_process(gateway.proc)
    assert usage_file(index_dir) == after_clear  # the save on the way out brought nothing back
    assert gateway.proc.returncode in (0, -15)
    assert "Traceback" not in gateway.output()
    listed = vmcp("index", "usage", "-c", str(config))
    assert "2 tools used, 2 uses in tasks, 1 pairs used together" in listed.stdout, listed.stdout


@pytest.mark.slow
@pytest.mark.anyio
async def test_two_gateways_on_one_index_dir_each_drop_what_they_learned_before_a_clear(tmp_path: Path) -> None:
    """The second gateway syncs once an hour: what it learned before the clear is unsaved when the clear comes,
    and its save on the way out (after the first one has written the history again) must not add it."""
    index_dir = tmp_path / "indexes"
    config = write_config(tmp_path, usage_config(index_dir, usage_sync_interval=3600))
    with running_gateways(config, 2) as (first, second):
        await learn_a_task(second)  # unsaved: its next sync is an hour away
        await learn_a_task(first)
        assert usage_file(index_dir) is None
        cleared = vmcp("index", "usage", "--clear", "-c", str(config))
        assert cleared.returncode == 0, cleared.stderr
        # Nothing on disk yet, but the gateways hold what they learned: the clear still reaches them.
        assert "nothing to clear on disk; a running gateway drops what it learned and has not saved yet" in (
            cleared.stdout
        )
        stop_process(first.proc)
        assert CLEARED in first.output() and "(2 tool uses not yet saved dropped)" in first.output()
        assert usage_file(index_dir) is None
        assert COMPANION in await names_found(second)  # it has not synced yet: it still ranks with its own
        stop_process(second.proc)
        assert CLEARED in second.output() and "(2 tool uses not yet saved dropped)" in second.output()
    assert usage_file(index_dir) is None


def test_gateways_sharing_a_directory_each_notice_a_clear_once(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    first, second = FileUsageHistory(path), FileUsageHistory(path)
    graphs = first.load(), second.load()
    graphs[0].record_task(["flights", "currency"])
    first.save(graphs[0])
    second.save(graphs[1])  # nothing learned here: it reads the other's history
    assert graphs[1].companions("flights") == {"currency": pytest.approx(1 / 3)}
    graphs[1].record_task(["flights", "weather"])  # unsaved when the clear comes

    assert FileUsageHistory(path).clear() is True
    assert not path.exists()
    graphs[0].record_task(["hotels", "currency"])  # learned after the clear, before the first gateway's sync
    first.save(graphs[0])  # the first to sync after the clear: drops everything it held, writes nothing
    assert not path.exists() and len(graphs[0]) == 0
    graphs[0].record_task(["trains", "currency"])
    first.save(graphs[0])  # the clear is noticed once: what is learned after it is kept
    second.save(graphs[1])
    expected = {"trains": {"currency": 1}, "currency": {"trains": 1}}
    assert UsageGraph.read(path).to_json()["together"] == expected
    assert graphs[1].to_json()["together"] == expected  # its own unsaved pair went with the clear
    second.save(graphs[1])
    assert UsageGraph.read(path).to_json()["together"] == expected


def test_a_sync_with_nothing_learned_and_nothing_changed_touches_no_file(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    history = FileUsageHistory(path)
    graph = history.load()
    history.save(graph)
    assert list(tmp_path.iterdir()) == []  # no lock file, no history: it only looked
    graph.record_task(["a", "b"])
    history.save(graph)
    written = path.stat().st_mtime_ns, path.stat().st_ino
    history.save(graph)
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == written


# --- `vmcp validate --connect` and optimizer.pinned -------------------------------------------------------------


def pinned_config(tmp_path: Path, pinned: list[str]) -> Path:
    return write_config(tmp_path, {"backends": [demo_backend("notes")], "optimizer": {"pinned": pinned}})


@pytest.mark.slow
def test_validate_connect_names_a_misspelt_pinned_tool_and_the_served_names_close_to_it(tmp_path: Path) -> None:
    config = pinned_config(tmp_path, ["notes_whoami", "notes_save_nte", "zzz_nothing_like_it"])
    assert vmcp("validate", "-c", str(config)).returncode == 0  # offline, the names cannot be known
    result = vmcp("validate", "--connect", "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "valid" not in result.stdout
    lines = result.stderr.splitlines()
    assert (
        "  optimizer.pinned[1]: unknown tool 'notes_save_nte' (no backend or workflow serves it now); "
        "did you mean 'notes_save_note'?"
    ) in lines
    assert "  optimizer.pinned[2]: unknown tool 'zzz_nothing_like_it' (no backend or workflow serves it now)" in lines
    assert not any("pinned[0]" in line for line in lines)


@pytest.mark.slow
def test_pinned_names_are_checked_against_the_live_catalogue_and_the_workflows(tmp_path: Path) -> None:
    workflow = {"name": "morning", "description": "d", "steps": [{"id": "a", "tool": "notes_whoami"}]}
    config = VmcpConfig.model_validate(
        {
            "backends": [demo_backend("notes")],
            "workflows": [workflow],
            "optimizer": {"pinned": ["morning", "notes_whoami", "save_note", "mornin"]},
        }
    )
    connected = anyio.run(connect_once, config)
    assert not connected.failed
    assert unknown_pinned(config, connected.tool_names) == [
        "optimizer.pinned[2]: unknown tool 'save_note' (no backend or workflow serves it now); "
        "did you mean 'notes_save_note'?",
        "optimizer.pinned[3]: unknown tool 'mornin' (no backend or workflow serves it now); did you mean 'morning'?",
    ]
