"""find_tool lists the tool that issues a token next to the tool that requires it, and the chain works.

A real `vmcp serve` in front of the alarms demo backend (examples/backends/alarms_server.py) served over
streamable HTTP and the demo notes backend over stdio, driven by the SDK's client as an agent would: find,
then call the issuer, then the tool that needed its value.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.support import EXAMPLES, demo_backend, free_port, running_gateway, stop_process, wait_http, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

ALARMS_SERVER = EXAMPLES / "backends" / "alarms_server.py"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def alarms_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ALARMS_SERVER), "--http", "--port", str(port)], stderr=subprocess.DEVNULL
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/mcp", expect=(200, 400, 404, 405, 406), proc=proc)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory, alarms_url: str) -> AsyncIterator[Client]:
    directory = tmp_path_factory.mktemp("prerequisites")
    config = {
        "backends": [{"name": "alarms", "transport": "streamable-http", "url": alarms_url}, demo_backend("notes")],
        "optimizer": {"enabled": True, "index_dir": str(directory / "indexes")},
    }
    with running_gateway(write_config(directory, config)) as gateway:
        async with Client(gateway.url, mode="legacy") as session:
            with anyio.fail_after(120):  # both backends listed and their vectors built
                while True:
                    answer = await session.call_tool("find_tool", {"query": "alarm", "limit": 20})
                    found = answer.structured_content or {}
                    if found.get("ranking") == "hybrid" and len(found.get("tools", [])) >= 8:
                        break
                    await anyio.sleep(0.3)
            yield session


async def find(client: Client, query: str, limit: int) -> list[dict[str, Any]]:
    result = await client.call_tool("find_tool", {"query": query, "limit": limit})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    tools: list[dict[str, Any]] = result.structured_content["tools"]
    return tools


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> tuple[bool, str]:
    result = await client.call_tool("call_tool", {"tool_name": tool, "arguments": arguments})
    text = " ".join(getattr(block, "text", "") for block in result.content)
    return result.is_error, text


async def test_the_token_issuer_follows_the_tool_that_needs_its_token(client: Client) -> None:
    tools = await find(client, "cancel my 7am alarm", limit=2)
    assert [tool["name"] for tool in tools] == ["alarms_delete_alarm", "alarms_get_user_token"]
    assert "supplies" not in tools[0]
    assert tools[1]["supplies"] == {"tool": "alarms_delete_alarm", "argument": "token"}


async def test_a_request_needing_no_token_brings_no_issuer(client: Client) -> None:
    tools = await find(client, "save a note titled groceries", limit=2)
    assert tools[0]["name"] == "notes_save_note"
    assert all("supplies" not in tool for tool in tools)


async def test_the_agent_can_follow_the_chain_find_told_it(client: Client) -> None:
    failed, token = await call(client, "alarms_get_user_token", {"username": "alice", "password": "wonderland"})
    assert not failed, token
    failed, alarm_id = await call(client, "alarms_add_alarm", {"token": token, "time": "2026-03-16 07:00"})
    assert not failed, alarm_id
    failed, text = await call(client, "alarms_delete_alarm", {"token": token, "alarm_id": int(alarm_id)})
    assert (failed, text) == (False, f"alarm {alarm_id} deleted")
    # Without the issued value the backend refuses, and the agent is told why.
    failed, text = await call(client, "alarms_delete_alarm", {"token": "forged", "alarm_id": 1})
    assert failed
    assert "invalid or expired token" in text


async def test_a_nonsense_request_is_told_nothing_fits(client: Client) -> None:
    result = await client.call_tool("find_tool", {"query": "zqxj vlorp gnarf"})
    answer = result.structured_content
    assert answer is not None
    assert answer["nothing_fits"] is True
    assert answer["tools"] and all(tool["weak_match"] for tool in answer["tools"])
    assert "nothing fits this request well" in answer["note"]


async def test_a_good_match_has_a_high_score_on_the_same_scale(client: Client) -> None:
    result = await client.call_tool("find_tool", {"query": "cancel my 7am alarm", "limit": 3})
    answer = result.structured_content
    assert answer is not None
    assert "nothing_fits" not in answer
    best = answer["tools"][0]
    assert best["name"] == "alarms_delete_alarm" and "weak_match" not in best
    assert all(0.0 <= tool["score"] <= 1.0 for tool in answer["tools"])
    names = {tool["name"] for tool in answer["tools"]}
    assert all(tool["supplies"]["tool"] in names for tool in answer["tools"] if "supplies" in tool)
