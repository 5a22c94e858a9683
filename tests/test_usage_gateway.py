"""The gateway learns which tools are used together from the calls it routes, and find_tool ranks by it.

Real `vmcp serve` processes over real backends (the time server and the demo notes server), driven by the
SDK's client: a handshake-era session over streamable HTTP (one connection for all its calls), and a
2026-07-28 client over stdio (its calls share one pipe). The history lives in `index_dir/usage.json`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.support import EXAMPLES, demo_backend, running_gateway, stop_process, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# "save a note" matches notes_save_note, never the time tools; in three results the time tools have no
# place until a client has used one of them with notes_save_note.
QUERY = "save a note"
COMPANION = "time_get_current_time"
SECRET = "argument-value-never-kept-7f3a"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def usage_config(index_dir: Path, **optimizer: Any) -> dict[str, Any]:
    return {
        "backends": [
            {"name": "time", "command": "python", "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
            demo_backend("notes"),
        ],
        "optimizer": {"enabled": True, "index_dir": str(index_dir), **optimizer},
    }


async def find_answer(client: Client, query: str = QUERY, limit: int = 3) -> list[dict[str, Any]]:
    result = await client.call_tool("find_tool", {"query": query, "limit": limit})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    tools: list[dict[str, Any]] = result.structured_content["tools"]
    return tools


async def find(client: Client, query: str = QUERY, limit: int = 3) -> list[str]:
    return [tool["name"] for tool in await find_answer(client, query, limit)]


async def wait_for_vectors(client: Client) -> None:
    """Rankings compared across sessions and processes must all be hybrid ones."""
    with anyio.fail_after(120):
        while True:
            result = await client.call_tool("find_tool", {"query": "anything"})
            if result.structured_content and result.structured_content["ranking"] == "hybrid":
                return
            await anyio.sleep(0.3)


async def wait_for_catalogue(client: Client) -> None:
    """With the optimizer on the gateway serves at once; the backends' tools arrive as they connect."""
    with anyio.fail_after(30):
        while len(await find(client, limit=8)) < 7:  # noqa: ASYNC110 - polling the server
            await anyio.sleep(0.2)


async def call_ok(client: Client, name: str, arguments: dict[str, Any]) -> None:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, result.content


async def call_failing(client: Client, name: str, arguments: dict[str, Any]) -> None:
    result = await client.call_tool(name, arguments)
    assert result.is_error, result.content


def read_usage(index_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((index_dir / "usage.json").read_text(encoding="utf-8"))
    return data


@dataclass
class FirstRun:
    """What one gateway learned from one HTTP session, and what it wrote on a graceful stop."""

    index_dir: Path
    config: Path
    before: list[str]
    after: list[str]
    # `used_with` of each tool in the later session's answer (None when the request alone ranked it).
    used_with: dict[str, str | None]
    raw_file: str
    usage: dict[str, Any]
    log: str
    returncode: int | None


@pytest.fixture(scope="module")
async def first_run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FirstRun]:
    directory = tmp_path_factory.mktemp("usage")
    index_dir = directory / "indexes"
    # No periodic save within the test (the saver runs from the start): only the way out writes the file.
    config = write_config(directory, usage_config(index_dir, usage_sync_interval=3600))
    with running_gateway(config) as gateway:
        async with Client(gateway.url, mode="legacy") as client:
            await wait_for_vectors(client)
            before = await find(client)
            # One task: the note through call_tool, the time directly; the failures in between are not uses.
            await call_ok(
                client, "call_tool", {"tool_name": "notes_save_note", "arguments": {"title": "t", "text": SECRET}}
            )
            await call_failing(client, "notes_search_notes", {"query": 42})  # refused by the gateway's check
            await call_failing(  # refused by the backend itself
                client,
                "call_tool",
                {
                    "tool_name": "time_convert_time",
                    "arguments": {"source_timezone": "Nowhere/Atlantis", "time": "12:00", "target_timezone": "UTC"},
                },
            )
            await call_ok(client, COMPANION, {"timezone": "Asia/Tokyo"})
        async with Client(gateway.url, mode="legacy") as client:  # a later session
            answer = await find_answer(client)
            after = [tool["name"] for tool in answer]
            used_with = {tool["name"]: tool.get("used_with") for tool in answer}
        async with Client(gateway.url) as client:  # 2026-07-28 over HTTP: each call a stateless exchange
            await call_ok(client, "notes_whoami", {})
            await call_ok(client, "notes_slow_echo", {"message": "hi", "seconds": 0})
        assert not (index_dir / "usage.json").exists()  # written every interval or on the way out
        stop_process(gateway.proc)
        raw = (index_dir / "usage.json").read_text(encoding="utf-8")
        yield FirstRun(
            index_dir, config, before, after, used_with, raw, json.loads(raw), gateway.output(), gateway.proc.returncode
        )


async def test_a_tool_used_with_the_best_match_joins_find_tools_answer(first_run: FirstRun) -> None:
    assert first_run.before[0] == "notes_save_note"
    assert COMPANION not in first_run.before
    assert first_run.after[0] == "notes_save_note"
    assert COMPANION in first_run.after  # raised by co-usage alone: the query says nothing of time
    # The answer says why it is there, and only for it.
    assert first_run.used_with[COMPANION] == "notes_save_note"
    assert first_run.used_with["notes_save_note"] is None


async def test_a_graceful_stop_writes_only_tool_names_and_counts(first_run: FirstRun) -> None:
    assert first_run.returncode in (0, -15)
    assert "Traceback" not in first_run.log
    assert first_run.usage == {
        "version": 1,
        "tasks": {"notes_save_note": 1, COMPANION: 1},
        "together": {"notes_save_note": {COMPANION: 1}, COMPANION: {"notes_save_note": 1}},
    }
    assert SECRET not in first_run.raw_file
    assert "Asia/Tokyo" not in first_run.raw_file


async def test_failed_calls_are_not_recorded(first_run: FirstRun) -> None:
    assert "notes_search_notes" not in first_run.raw_file
    assert "time_convert_time" not in first_run.raw_file


async def test_stateless_http_calls_are_not_taken_for_one_task(first_run: FirstRun) -> None:
    # Nothing ties the calls of a 2026-07-28 HTTP client without credentials together: none of them is
    # recorded (as one-tool tasks they would only dilute what sessions teach).
    assert "notes_whoami" not in first_run.raw_file
    assert "notes_slow_echo" not in first_run.raw_file


async def test_the_history_survives_a_restart_and_a_stdio_client_adds_to_it(first_run: FirstRun) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(first_run.config)]
    )
    async with Client(params) as client:  # a 2026-07-28 client: a fresh connection per request, one pipe
        assert client.protocol_version == "2026-07-28"
        # The index re-embeds the tools of the backend that stopped first last time; once settled, the
        # ranking is the one the first gateway gave after learning (never so without the history).
        with anyio.fail_after(60):
            while await find(client) != first_run.after:  # noqa: ASYNC110 - polling the server
                await anyio.sleep(0.3)
        await call_ok(client, "notes_whoami", {})
        await call_ok(
            client, "call_tool", {"tool_name": "notes_slow_echo", "arguments": {"message": "hi", "seconds": 0}}
        )
    # Closing the client stops the gateway, which writes what it learned on the way out.
    usage = read_usage(first_run.index_dir)
    assert usage["together"]["notes_whoami"] == {"notes_slow_echo": 1}
    assert usage["together"]["notes_save_note"] == {COMPANION: 1}
    assert usage["tasks"] == {"notes_save_note": 1, COMPANION: 1, "notes_whoami": 1, "notes_slow_echo": 1}


async def test_usage_off_records_nothing_and_writes_no_file(tmp_path: Path) -> None:
    index_dir = tmp_path / "indexes"
    config = write_config(tmp_path, usage_config(index_dir, usage=False))
    with running_gateway(config) as gateway:
        async with Client(gateway.url, mode="legacy") as client:
            await wait_for_catalogue(client)
            await call_ok(client, "notes_save_note", {"title": "t", "text": "x"})
            await call_ok(client, COMPANION, {"timezone": "UTC"})
            assert COMPANION not in await find(client)
        stop_process(gateway.proc)
    assert not (index_dir / "usage.json").exists()
    assert "Traceback" not in gateway.output()


async def test_a_corrupt_history_is_kept_aside_and_the_gateway_serves(tmp_path: Path) -> None:
    index_dir = tmp_path / "indexes"
    index_dir.mkdir()
    (index_dir / "usage.json").write_text('{"version": 1, "tasks": {"a": "many"}', encoding="utf-8")
    config = write_config(tmp_path, usage_config(index_dir))
    with running_gateway(config) as gateway:
        async with Client(gateway.url, mode="legacy") as client:
            await wait_for_catalogue(client)
            assert (await find(client))[0] == "notes_save_note"
            await call_ok(client, "notes_save_note", {"title": "t", "text": "x"})
            await call_ok(client, COMPANION, {"timezone": "UTC"})
        stop_process(gateway.proc)
    (aside,) = index_dir.glob("usage.json.corrupt-*")
    assert aside.read_text(encoding="utf-8") == '{"version": 1, "tasks": {"a": "many"}'
    assert read_usage(index_dir)["together"] == {"notes_save_note": {COMPANION: 1}, COMPANION: {"notes_save_note": 1}}
    assert aside.name in gateway.output()


async def test_stateless_http_clients_with_unverified_credentials_are_one_client_per_address(tmp_path: Path) -> None:
    """A 2026-07-28 HTTP client's calls form tasks by its address: an unverified Authorization header is no
    identity (a client can send as many as it likes), and is never kept."""
    index_dir = tmp_path / "indexes"
    alice, bob = f"Bearer alice-{SECRET}", f"Bearer bob-{SECRET}"
    with running_gateway(write_config(tmp_path, usage_config(index_dir))) as gateway:
        async with Client(gateway.url) as anonymous:
            await wait_for_catalogue(anonymous)

        def as_client(header: str) -> Client:
            http = httpx2.AsyncClient(headers={"Authorization": header})
            return Client(streamable_http_client(gateway.url, http_client=http))

        async with as_client(alice) as first, as_client(bob) as second:
            assert first.protocol_version == "2026-07-28"
            await call_ok(first, "notes_whoami", {})
            await call_ok(second, COMPANION, {"timezone": "UTC"})  # from the same address: the same task
        stop_process(gateway.proc)
        log = gateway.output()
    raw = (index_dir / "usage.json").read_text(encoding="utf-8")
    usage = json.loads(raw)
    assert usage["together"] == {"notes_whoami": {COMPANION: 1}, COMPANION: {"notes_whoami": 1}}
    assert usage["tasks"] == {"notes_whoami": 1, COMPANION: 1}
    for text in (raw, log):
        assert SECRET not in text


async def test_a_client_opening_many_sessions_weighs_as_one_client(tmp_path: Path) -> None:
    """Usage learning is keyed by who calls (here: the address), not by the session: twenty sessions that each
    use the same two tools are one task of one client, not twenty votes in everyone's ranking."""
    index_dir = tmp_path / "indexes"
    with running_gateway(write_config(tmp_path, usage_config(index_dir))) as gateway:
        for _ in range(20):
            async with Client(gateway.url, mode="legacy") as client:
                await wait_for_catalogue(client)
                await call_ok(client, "notes_whoami", {})
                await call_ok(client, COMPANION, {"timezone": "UTC"})
        stop_process(gateway.proc)
    usage = read_usage(index_dir)
    assert usage["together"] == {"notes_whoami": {COMPANION: 1}, COMPANION: {"notes_whoami": 1}}
    assert usage["tasks"] == {"notes_whoami": 1, COMPANION: 1}


async def test_a_workflows_own_steps_are_not_learned_as_the_clients_use(tmp_path: Path) -> None:
    """The demo's `world_clock` calls time_convert_time for each zone: those calls are the workflow's, not the
    client's. Used alone it ranks nothing anew; the client's own next call still makes a pair with it."""
    demo = yaml.safe_load((EXAMPLES / "demo.yaml").read_text(encoding="utf-8"))
    index_dir = tmp_path / "indexes"
    config = write_config(tmp_path, {**usage_config(index_dir), "workflows": demo["workflows"]})
    query = "what time is it in Tokyo"
    with running_gateway(config) as gateway:
        async with Client(gateway.url, mode="legacy") as client:
            await wait_for_vectors(client)
            before = await find(client, query)
            await call_ok(client, "call_tool", {"tool_name": "world_clock", "arguments": {}})
            after_workflow = await find(client, query)
            await call_ok(client, COMPANION, {"timezone": "Asia/Tokyo"})  # the client's own call, same task
        stop_process(gateway.proc)
    assert after_workflow == before
    usage = read_usage(index_dir)
    assert usage["tasks"] == {"world_clock": 1, COMPANION: 1}
    assert usage["together"] == {"world_clock": {COMPANION: 1}, COMPANION: {"world_clock": 1}}
    assert "Traceback" not in gateway.output()
