"""A hostile backend (examples/backends/hostile_server.py) against a real gateway process (issue 22).

Each test checks that the gateway keeps serving (`/healthz`, another backend's calls) and leaks nothing,
with generous time bounds only: the figures belong to bench/abuse.py.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import (
    EXAMPLES,
    Gateway,
    counting_http_server,
    demo_backend,
    free_port,
    raw_session,
    running_gateway,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

HOSTILE_SERVER = EXAMPLES / "backends" / "hostile_server.py"
SECRET = "sekrit-hostile-4242"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def hostile_backend(**env: str) -> dict[str, Any]:
    return {"name": "hostile", "command": sys.executable, "args": [str(HOSTILE_SERVER)], "env": env}


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def healthz_answers(gateway: Gateway) -> None:
    async with httpx2.AsyncClient() as http:
        assert (await http.get(f"{gateway.base}/healthz", timeout=10.0)).status_code == 200


@pytest.fixture
def counting_server() -> Iterator[tuple[str, list[str]]]:
    with counting_http_server() as (base, hits):
        yield f"{base}/schema.json", hits


@pytest.mark.parametrize("mode", ["fail", "best_effort"])
async def test_tools_that_cannot_be_served_are_dropped_and_the_rest_served(tmp_path: Path, mode: str) -> None:
    config = {"backends": [hostile_backend(), demo_backend("notes")], "failure": {"mode": mode}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"hostile_echo", "hostile_dup", "hostile_redos", "notes_save_note"} <= names
            assert not {"hostile_string_schema", "hostile_not_object"} & names
            assert not any(len(name) > 128 for name in names)
            result = await client.call_tool("hostile_echo", {"message": "still here"})
            assert not result.is_error and "still here" in text(result)
            # A text UTF-8 cannot encode is served with U+FFFD in place of the lone surrogate, not passed on to
            # break the answer.
            surrogate = await client.call_tool("hostile_surrogate", {})
            assert not surrogate.is_error and text(surrogate) == "before \ufffd after", text(surrogate)
            assert not (await client.call_tool("notes_save_note", {"title": "t", "text": "x"})).is_error
        await healthz_answers(gateway)
    log = gateway.output()
    for tool in ("string_schema", "not_object", "dup"):
        assert sum(f"tool '{tool}' dropped" in line for line in log.splitlines()) == 1, log
    assert "n" * 1000 not in log, "an absurd name is shortened in the warning"


async def test_a_listing_of_thousands_of_invalid_tools_costs_a_bounded_number_of_warnings(tmp_path: Path) -> None:
    """The page is refused, then screened item by item (off the event loop): the valid tools are served,
    20 invalid ones are named in warnings and the rest counted in one line."""
    config = {"backends": [hostile_backend(HOSTILE_INVALID_TOOLS="3000", HOSTILE_TOOLS="500"), demo_backend("notes")]}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            # 3,513 tools in the refused page, 513 in the screened one: both validated in slices.
            assert {"hostile_echo", "notes_save_note", *(f"hostile_tool_{n}" for n in range(500))} <= names
            assert not any(name.startswith("hostile_invalid_") for name in names)
            await healthz_answers(gateway)
    log = gateway.output().splitlines()
    named = [line for line in log if "dropped: its definition is invalid" in line]
    counted = [line for line in log if "more tools dropped as invalid" in line]
    assert len(named) == 20, len(named)
    # 3,000, string_schema and not_object, less the 20 named.
    assert len(counted) == 1 and "2982 more tools" in counted[0], counted


async def test_a_tool_whose_schema_is_nested_too_deep_is_dropped_and_its_backend_served(tmp_path: Path) -> None:
    """Before, pydantic's serializer refused the page with a plain ValueError, which failed the whole backend
    (restarted forever, no tool named) instead of screening the page."""
    config = {"backends": [hostile_backend(HOSTILE_DEEP_SCHEMA="300"), demo_backend("notes")]}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert "hostile_echo" in names and "hostile_deep" not in names
            assert not (await client.call_tool("hostile_echo", {"message": "served"})).is_error
        body = httpx2.get(f"{gateway.base}/readyz", timeout=10.0).json()
        hostile = next(b for b in body["backends"] if b["name"] == "hostile")
        assert hostile["state"] == "ready" and hostile["restarts"] == 0, hostile
    log = gateway.output()
    assert sum("tool 'deep' dropped: its definition is invalid" in line for line in log.splitlines()) == 1, log
    assert "backend hostile failed" not in log


async def test_a_pattern_with_thousands_of_groups_is_checked_without_tracking_them(tmp_path: Path) -> None:
    """RE2 tracking 10,000 submatches took ~2.6 s per check, a single C call past the 1 s deadline; a check
    needs only match or no match. Since the deadline is also checked after a search, this call would now be
    refused if the groups were still tracked."""
    config = {"backends": [hostile_backend(HOSTILE_GROUPS="10000")]}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            matching = await client.call_tool("hostile_groups", {"a": "a"})
            assert not matching.is_error, text(matching)
            refused = await client.call_tool("hostile_groups", {"a": "b"})
            assert refused.is_error and "field 'a'" in text(refused) and "does not match" in text(refused)


async def test_hostile_schemas_neither_fetch_nor_read_nor_freeze(
    tmp_path: Path, counting_server: tuple[str, list[str]]
) -> None:
    url, hits = counting_server
    secret_file = tmp_path / "secret.json"
    secret_file.write_text(json.dumps({"type": "integer", "description": SECRET}), encoding="utf-8")
    backend = hostile_backend(HOSTILE_REF_URL=url, HOSTILE_REF_FILE=str(secret_file))
    with running_gateway(write_config(tmp_path, {"backends": [backend, demo_backend("notes")]})) as gateway:
        async with Client(gateway.url) as client, anyio.create_task_group() as group:
            outcomes: dict[str, types.CallToolResult] = {}

            async def call(tool: str, arguments: dict[str, Any]) -> None:
                outcomes[tool] = await client.call_tool(tool, arguments)

            group.start_soon(call, "hostile_redos", {"a": "a" * 30 + "!"})
            group.start_soon(call, "hostile_remote_ref", {"a": "not an integer"})
            group.start_soon(call, "hostile_file_ref", {"a": "not an integer"})
            await healthz_answers(gateway)
            assert not (await client.call_tool("notes_search_notes", {"query": "x"})).is_error
        assert outcomes["hostile_redos"].is_error and "field 'a'" in text(outcomes["hostile_redos"])
        assert not outcomes["hostile_remote_ref"].is_error  # not fetched: left to the backend
        assert not outcomes["hostile_file_ref"].is_error  # not read: left to the backend
        assert SECRET not in json.dumps([r.model_dump() for r in outcomes.values()])
    assert hits == []
    assert SECRET not in gateway.output()


async def test_a_list_changed_flood_costs_one_re_fetch(tmp_path: Path) -> None:
    # A long interval makes the count exact: the first announcement re-fetches at once, the rest of the
    # flood waits for one re-fetch an hour later.
    config = {"backends": [hostile_backend(), demo_backend("notes")], "limits": {"list_changed_interval": 3600}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            assert text(await client.call_tool("hostile_flood", {"count": 2000})) == "flooded"
            fetches: dict[str, int] = {}
            # Each listing of this backend is two tools/list requests: the page fails validation (its bad
            # tools), then comes again screened.
            with anyio.fail_after(30):
                while fetches.get("tools/list", 0) < 4:
                    fetches = json.loads(text(await client.call_tool("hostile_stats", {})))
                    await anyio.sleep(0.1)
            await healthz_answers(gateway)
            assert not (await client.call_tool("notes_search_notes", {"query": "x"})).is_error
            fetches = json.loads(text(await client.call_tool("hostile_stats", {})))
            assert fetches["tools/list"] == 4  # the first listing and one re-fetch for 2,000 announcements


async def test_re_fetches_are_paced_by_what_they_cost(tmp_path: Path) -> None:
    """With no interval and a pace of 10,000, a re-fetch of 5 ms or more makes the next one wait 50 s or
    more: a second announcement soon after is not fetched while the first re-fetch's cost is paid off. (At a
    pace of 1,000 the wait was 5 s, less than a loaded machine may take between the log line and the check.)"""
    pace = 10_000
    limits = {"list_changed_interval": 0, "list_changed_pace": pace}
    config = {"backends": [hostile_backend(HOSTILE_TOOLS="1000")], "limits": limits}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:

            async def listings() -> int:
                return int(json.loads(text(await client.call_tool("hostile_stats", {})))["tools/list"])

            assert text(await client.call_tool("hostile_flood", {"count": 1})) == "flooded"
            with anyio.fail_after(60):
                while "its re-fetch took" not in gateway.output():  # noqa: ASYNC110 - another process's log
                    await anyio.sleep(0.1)
            [line] = [line for line in gateway.output().splitlines() if "its re-fetch took" in line]
            took, waits = (float(word) for word in re.findall(r"(\d+\.\d+) s", line))
            # `took` is logged to 0.01 s
            assert waits == pytest.approx(pace * took, abs=pace * 0.005) and waits >= pace * 0.005
            fetched = await listings()
            assert text(await client.call_tool("hostile_flood", {"count": 1})) == "flooded"
            await anyio.sleep(2)
            assert await listings() == fetched  # announced, not yet fetched again
            await healthz_answers(gateway)


async def test_an_oversize_result_is_an_error_naming_the_backend_and_the_cap(tmp_path: Path) -> None:
    config = {"backends": [hostile_backend(), demo_backend("notes")], "limits": {"max_result_bytes": 100_000}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            small = await client.call_tool("hostile_big", {"bytes": 50_000})
            assert not small.is_error and len(text(small)) == 50_000
            # Within the stdio line cap (100,000 + 1 MiB): read, then refused by its measured size.
            big = await client.call_tool("hostile_big", {"bytes": 500_000})
            assert big.is_error and "backend 'hostile'" in text(big) and "100,000 bytes" in text(big)
            assert len(text(big)) < 1000
            # Past it: dropped while read, and the waiting call answered at once, whichever end its id is at,
            # with an error result too (tests/test_oversize_cut_results.py).
            for id_last in (False, True):
                dropped = await client.call_tool("hostile_big", {"bytes": 2_000_000, "id_last": id_last})
                assert dropped.is_error and "backend 'hostile'" in text(dropped) and "100,000 bytes" in text(dropped)
                assert len(text(dropped)) < 1000
            assert not (await client.call_tool("hostile_echo", {"message": "after"})).is_error
        await healthz_answers(gateway)
        body = httpx2.get(f"{gateway.base}/readyz", timeout=10.0).json()
        hostile = next(b for b in body["backends"] if b["name"] == "hostile")
        assert hostile["state"] == "ready" and hostile["circuit"]["state"] == "closed"


async def test_a_huge_stdio_line_is_dropped_while_other_clients_are_served(tmp_path: Path) -> None:
    huge, allowed = 50 * 2**20, 8 * 2**20  # the default cap is 10 MiB
    with running_gateway(write_config(tmp_path, {"backends": [hostile_backend(), demo_backend("notes")]})) as gateway:
        async with Client(gateway.url) as attacker, Client(gateway.url) as other:
            refusals: list[str] = []

            async def ask_for_too_much() -> None:
                dropped = await attacker.call_tool("hostile_big", {"bytes": huge})
                assert dropped.is_error
                refusals.append(text(dropped))

            async with anyio.create_task_group() as group:
                group.start_soon(ask_for_too_much)
                await healthz_answers(gateway)
                assert not (await other.call_tool("notes_search_notes", {"query": "x"})).is_error
            assert "backend 'hostile'" in refusals[0] and "10,485,760 bytes" in refusals[0]
            intact = await other.call_tool("hostile_big", {"bytes": allowed})
            assert not intact.is_error and text(intact) == "x" * allowed
            # A huge notification has no one waiting for it: dropped, and the call it came with still answered.
            assert text(await attacker.call_tool("hostile_big", {"bytes": huge, "notify": True})) == "sent"
    warnings = [line for line in gateway.output().splitlines() if "backend hostile wrote a message of" in line]
    assert len(warnings) == 2, warnings
    assert "no response id at either end" in warnings[1]


@pytest.mark.parametrize("kind", ["not_an_object", "deep"])
async def test_an_answer_that_is_not_json_rpc_is_an_error_at_once(tmp_path: Path, kind: str) -> None:
    # The call timeout is an hour: only the gateway's own answer can end the call within the test's time.
    config = {"backends": [hostile_backend(), demo_backend("notes")], "timeouts": {"call": 3600}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            with anyio.fail_after(30):
                broken = await client.call_tool("hostile_broken", {"kind": kind})
            message = text(broken)
            assert broken.is_error and "backend 'hostile'" in message and "not valid JSON-RPC" in message
            assert ("nested too deeply" in message) == (kind == "deep")
            assert len(message) < 1000
            assert not (await client.call_tool("hostile_echo", {"message": "after"})).is_error
            assert not (await client.call_tool("notes_search_notes", {"query": "x"})).is_error
        await healthz_answers(gateway)
    assert sum("backend hostile wrote a line of" in line for line in gateway.output().splitlines()) == 1


@contextmanager
def hostile_over_http(tmp_path: Path, limits: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """An upstream gateway serving the hostile backend over streamable HTTP: its backend entry, named "up"."""
    (tmp_path / "up").mkdir()
    config = {"backends": [hostile_backend()], "limits": limits}
    with running_gateway(write_config(tmp_path / "up", config)) as upstream:
        yield {"name": "up", "transport": "streamable-http", "url": upstream.url}


async def test_an_http_backends_answer_is_not_read_past_the_cap(tmp_path: Path) -> None:
    # The upstream gateway has room for 5 MB; the gateway under test has it as an HTTP backend and a 100 KB
    # cap (so 1.1 MiB with the envelope's room).
    with hostile_over_http(tmp_path, {"max_result_bytes": 64 * 2**20}) as backend:
        config = {"backends": [backend], "limits": {"max_result_bytes": 100_000}}
        with running_gateway(write_config(tmp_path, config)) as gateway:
            async with Client(gateway.url) as client:
                small = await client.call_tool("up_hostile_big", {"bytes": 50_000})
                assert not small.is_error and len(text(small)) == 50_000
                for _ in range(3):
                    with anyio.fail_after(60):
                        too_big = await client.call_tool("up_hostile_big", {"bytes": 5_000_000})
                    # An error result, as the stdio transport's for the same limit (the SDK's own: -32700 Parse error).
                    message = text(too_big)
                    assert too_big.is_error
                    assert message.startswith("backend 'up' answered with more than 1,148,576 bytes"), message
                    assert "not read further" in message and len(message) < 1000
                assert not (await client.call_tool("up_hostile_echo", {"message": "after"})).is_error
            await healthz_answers(gateway)
    # One warning line, not the SDK's ERROR with a traceback per call.
    log = gateway.output()
    assert "Traceback" not in log and "Error parsing JSON response" not in log
    assert sum("answered with more than 1,148,576 bytes" in line for line in log.splitlines()) == 1, log


async def test_an_http_backends_sse_event_may_be_as_large_as_the_result_cap(tmp_path: Path) -> None:
    # Asked for progress, the backend reports some before its 2 MB result, so the upstream gateway answers with
    # an SSE stream whose last event is that big: past the SDK's own 1 MiB default, within the gateway's cap
    # (10 MiB by default).
    with (
        hostile_over_http(tmp_path, {}) as backend,
        running_gateway(write_config(tmp_path, {"backends": [backend]})) as gateway,
    ):
        # This client too must take a big event: the gateway under test streams the result on to it.
        async with Client(streamable_http_client(gateway.url, max_sse_event_size=8 * 2**20)) as client:
            progress: list[float] = []

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                progress.append(value)

            with anyio.fail_after(60):
                big = await client.call_tool("up_hostile_big", {"bytes": 2_000_000}, progress_callback=on_progress)
            assert not big.is_error and len(text(big)) == 2_000_000, text(big)[:300]
            assert progress == [1]


# A backend on the SDK (it speaks 2026-07-28) listing a tool whose `x-mcp-header` sits on an object property.
HEADER_SERVER = """
import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

SCHEMA = {"type": "object", "properties": {"a": {"type": "string", "x-mcp-header": "A"}}}
BAD = {"type": "object", "properties": {"a": {"type": "object", "x-mcp-header": "A"}}}
TOOLS = [types.Tool(name="plain", input_schema=SCHEMA), types.Tool(name="bad_header", input_schema=BAD)]


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=TOOLS)


async def main():
    server = Server("headers", on_list_tools=list_tools)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


anyio.run(main)
"""


def test_a_2026_backends_tool_with_an_invalid_x_mcp_header_is_dropped(tmp_path: Path) -> None:
    # The 2026-07-28 client rule, applied by the gateway's own session with the backend: a 2025-11-25 client,
    # which would not apply it, is not shown the tool either.
    script = tmp_path / "header_server.py"
    script.write_text(HEADER_SERVER, encoding="utf-8")
    config = {"backends": [{"name": "h", "command": sys.executable, "args": [str(script)]}]}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        headers = raw_session(gateway.url)
        listed = httpx2.post(gateway.url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers)
        names = {tool["name"] for tool in listed.json()["result"]["tools"]}
    assert names == {"h_plain"}
    assert "protocol 2026-07-28" in gateway.output()


async def test_backend_stderr_and_url_credentials_are_masked_everywhere(tmp_path: Path) -> None:
    nowhere = f"http://admin:{SECRET}-pass@127.0.0.1:{free_port()}/mcp?token={SECRET}-query&x=1"
    config = {
        "backends": [
            hostile_backend(HOSTILE_TOKEN=SECRET),
            {"name": "nowhere", "transport": "streamable-http", "url": nowhere},
        ],
        "timeouts": {"connect": 5.0},
        "failure": {"restart": {"initial_delay": 0.2, "max_delay": 0.5}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            assert not (await client.call_tool("hostile_echo", {"message": "x"})).is_error
        readyz = httpx2.get(f"{gateway.base}/readyz", timeout=10.0).text
        await anyio.sleep(1.0)  # reconnect attempts to `nowhere` get logged
    log = gateway.output()
    assert "backend hostile stderr: hostile starting with token ***" in log
    assert SECRET not in log and SECRET not in readyz


async def test_a_stderr_line_too_long_to_show_is_cut_with_a_true_length(tmp_path: Path) -> None:
    """Before, the cut line claimed the length of what had been read when it was cut, as if it were the line's."""
    config = {"backends": [hostile_backend(HOSTILE_STDERR_LINE="200000")]}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            assert not (await client.call_tool("hostile_echo", {"message": "x"})).is_error
    [line] = [line for line in gateway.output().splitlines() if "backend hostile stderr: eee" in line]
    assert "characters)" not in line
    shown = int(re.findall(r"a line longer than ([\d,]+) bytes, cut", line)[0].replace(",", ""))
    assert 8000 < shown < 200_000
