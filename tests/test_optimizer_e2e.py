"""The optimizer through the real gateway process over real backends: meta-tools, ranking, persistence."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import (
    DEMO_SERVER,
    Gateway,
    api_keys_file,
    bearer_client,
    demo_backend,
    running_gateway,
    wait_until,
    write_config,
)
from vmcp_opt.config import VmcpConfig
from vmcp_opt.optimizer.tokens import count_tokens, tools_list_tokens

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def optimizer_config(index_dir: Path, **optimizer: Any) -> dict[str, Any]:
    return {
        "backends": [
            {"name": "time", "command": "python", "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
            demo_backend("notes"),
        ],
        "optimizer": {"enabled": True, "index_dir": str(index_dir), **optimizer},
    }


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("indexes")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, index_dir: Path) -> Iterator[Gateway]:
    config = write_config(tmp_path_factory.mktemp("optimizer"), optimizer_config(index_dir, pinned=["notes_whoami"]))
    with running_gateway(config) as running:
        yield running


async def find(client: Client, query: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool("find_tool", {"query": query, **arguments})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    # Clients that ignore structured content get the same answer as JSON text.
    assert json.loads(result.content[0].text) == result.structured_content  # type: ignore[union-attr]
    return result.structured_content


async def wait_for_vectors(client: Client) -> None:
    """Poll find_tool until it ranks with vectors (the model loads in the background)."""
    with anyio.fail_after(120):
        while (await find(client, "anything"))["ranking"] != "hybrid":  # noqa: ASYNC110 - polling the server
            await anyio.sleep(0.5)


def index_logged(gateway: Gateway, pattern: str) -> None:
    """Waits for the update's log line: it is written after the vectors are swapped in and saved, so a read
    right after find_tool first ranks with them can come before it."""
    wait_until(lambda: re.search(pattern, gateway.output()), 60, lambda: f"{pattern!r} in\n{gateway.output()[-3000:]}")


async def test_tools_list_holds_the_meta_tools_and_pinned_tools(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        # The meta-tools need no backend, so they are there from the first answer; pinned tools join
        # once their backend has connected.
        names = [tool.name for tool in (await client.list_tools()).tools]
        assert names[:2] == ["find_tool", "call_tool"]
        with anyio.fail_after(30):
            while names != ["find_tool", "call_tool", "notes_whoami"]:
                await anyio.sleep(0.2)
                names = [tool.name for tool in (await client.list_tools()).tools]


async def test_find_tool_ranks_the_current_time_tool_first(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        await wait_for_vectors(client)
        answer = await find(client, "what time is it in Tokyo right now")
        first = answer["tools"][0]
        assert first["name"] == "time_get_current_time"
        assert first["backend"] == "time"
        assert "timezone" in first["input_schema"]["properties"]
        assert answer["tokens"]["this_answer"] < answer["tokens"]["full_tool_list"]


async def test_find_tool_writes_non_ascii_as_written_and_counts_that_text(gateway: Gateway) -> None:
    """An escape per character (`\\u6771`) costs an agent's model several tokens where the character costs one
    or two: the answer's text keeps it as written, and its token figure counts that text as sent (its
    non-ASCII counted as written: tests/test_optimizer_index.py)."""
    query = "Wie spät ist es gerade in 東京?"
    async with Client(gateway.url) as client:
        await wait_for_vectors(client)
        result = await client.call_tool("find_tool", {"query": query})
    text = result.content[0].text  # type: ignore[union-attr]
    answer = json.loads(text)
    assert f'"query":"{query}"' in text and "\\u" not in text
    # The whole text as sent (exactly, or a token or two over: tokens.py `AnswerTokens._settled`).
    assert count_tokens(text) <= answer["tokens"]["this_answer"] <= count_tokens(text) + 2


async def test_find_tool_filters_by_backend_and_limits(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        answer = await find(client, "save a note", limit=2, backends=["notes"])
        assert 1 <= len(answer["tools"]) <= 2
        assert {tool["backend"] for tool in answer["tools"]} == {"notes"}
        bad = await client.call_tool("find_tool", {"query": "x", "backends": ["nope"]})
        assert bad.is_error and "field 'backends'" in bad.content[0].text  # type: ignore[union-attr]
        bad = await client.call_tool("find_tool", {"query": "x", "limit": 500})
        assert bad.is_error and "field 'limit'" in bad.content[0].text  # type: ignore[union-attr]


async def test_call_tool_runs_the_tool_and_names_wrong_fields(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool(
            "call_tool", {"tool_name": "time_get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}
        )
        assert not result.is_error
        assert json.loads(result.content[0].text)["timezone"] == "Asia/Tokyo"  # type: ignore[union-attr]
        wrong = await client.call_tool(
            "call_tool", {"tool_name": "time_get_current_time", "arguments": {"timezone": 9}}
        )
        assert wrong.is_error and "field 'timezone'" in wrong.content[0].text  # type: ignore[union-attr]
        unknown = await client.call_tool("call_tool", {"tool_name": "no_such_tool", "arguments": {}})
        assert unknown.is_error and "unknown tool 'no_such_tool'" in unknown.content[0].text  # type: ignore[union-attr]


async def test_hidden_tools_can_still_be_called_by_name(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        result = await client.call_tool("notes_save_note", {"title": "hidden", "text": "still callable"})
        assert not result.is_error


async def test_a_backend_whose_tools_change_is_reindexed_without_restart(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        await wait_for_vectors(client)
        await client.call_tool(
            "call_tool",
            {
                "tool_name": "notes_add_tool",
                "arguments": {"name": "forecast_weather", "description": "Weather forecast for a city"},
            },
        )
        with anyio.fail_after(60):
            while True:
                answer = await find(client, "will it rain in Paris tomorrow", limit=3)
                if answer["ranking"] == "hybrid" and answer["tools"][0]["name"] == "notes_forecast_weather":
                    break
                await anyio.sleep(0.3)
    index_logged(gateway, r"index updated: embedded 1, reused \d+")


async def test_a_restart_reuses_the_persisted_index(tmp_path: Path, gateway: Gateway, index_dir: Path) -> None:
    async with Client(gateway.url) as client:
        await wait_for_vectors(client)
    config = write_config(tmp_path, optimizer_config(index_dir))
    with running_gateway(config) as restarted:
        async with Client(restarted.url) as client:
            await wait_for_vectors(client)
        index_logged(restarted, r"index updated: embedded 0, reused \d+")


async def test_a_graceful_stop_keeps_every_backends_vectors(tmp_path: Path) -> None:
    """Backends stop one by one on shutdown; the persisted index must not shrink with them."""
    index_dir = tmp_path / "own-index"
    config = write_config(tmp_path, optimizer_config(index_dir))
    with running_gateway(config) as first:
        async with Client(first.url) as client:
            await wait_for_vectors(client)
    with running_gateway(config) as second:
        async with Client(second.url) as client:
            await wait_for_vectors(client)
        index_logged(second, r"index updated: embedded 0, reused \d+")


async def test_no_optimizer_flag_gives_the_full_list_back(tmp_path: Path, index_dir: Path) -> None:
    config = write_config(tmp_path, optimizer_config(index_dir))
    with running_gateway(config, "--no-optimizer") as plain:
        async with Client(plain.url) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
    assert "find_tool" not in names
    assert {"time_get_current_time", "notes_save_note"} <= names


async def test_a_users_own_config_has_the_optimizer_on_and_the_environment_turns_it_off(tmp_path: Path) -> None:
    # Written by hand, as a user would: no optimizer section at all (tests.support.write_config turns it off).
    config = tmp_path / "mine.yaml"
    config.write_text(f"backends:\n  - {{name: notes, command: python, args: ['{DEMO_SERVER}']}}\n", encoding="utf-8")
    with running_gateway(config) as default:
        async with Client(default.url) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == {"find_tool", "call_tool"}
    with running_gateway(config, env={"VMCP_OPTIMIZER__ENABLED": "false"}) as plain:
        async with Client(plain.url) as client:
            assert "notes_save_note" in {tool.name for tool in (await client.list_tools()).tools}


async def test_find_tool_counts_the_full_list_of_the_tools_the_caller_may_use_not_the_whole_catalogue(
    tmp_path: Path,
) -> None:
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["dev"], "bob": ["ops"]})
    (tmp_path / "policy.cedar").write_text(
        'permit(principal in Group::"dev", action, resource);\n'
        'permit(principal in Group::"ops", action, resource == Tool::"notes_whoami");\n'
    )
    config = {
        **optimizer_config(tmp_path / "indexes", pinned=["notes_whoami"]),
        "auth": {
            "incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}},
            "authorization": {"policies": "policy.cedar"},
        },
    }
    answers: dict[str, dict[str, Any]] = {}
    listed: list[types.Tool] = []
    with running_gateway(write_config(tmp_path, config)) as gateway:
        for name, key in keys.items():
            async with bearer_client(gateway.url, key) as client:
                answers[name] = await find(client, "who am I")
                if name == "bob":
                    listed = (await client.list_tools()).tools
    # bob may use one backend tool: the list find_tool saves him is that one tool's, as tools/list shows it.
    (whoami_tool,) = [tool for tool in listed if tool.name == "notes_whoami"]
    model = VmcpConfig().optimizer.model
    bob_tokens, alice_tokens = answers["bob"]["tokens"], answers["alice"]["tokens"]
    assert bob_tokens["full_tool_list"] == tools_list_tokens([whoami_tool], model)
    assert bob_tokens["saved"] == max(0, bob_tokens["full_tool_list"] - bob_tokens["this_answer"])
    assert alice_tokens["full_tool_list"] > bob_tokens["full_tool_list"]


TOKENLESS_SERVER = """\
from mcp.server.mcpserver import MCPServer

server = MCPServer("tiny")


@server.tool(name="a", description="")
def a() -> str:
    return "ok"


if __name__ == "__main__":
    server.run()
"""


async def test_a_catalogue_without_keyword_tokens_serves_with_no_keyword_hits(tmp_path: Path) -> None:
    """One tool `a`, no description: no token survives stopwords and the two-character minimum. The keyword
    arm is empty rather than a crash that left /readyz at "starting" and every MCP request failing."""
    (tmp_path / "tiny_server.py").write_text(TOKENLESS_SERVER, encoding="utf-8")
    backend = {"name": "b", "command": "python", "args": [str(tmp_path / "tiny_server.py")]}
    config = {"backends": [backend], "optimizer": {"enabled": True, "index_dir": str(tmp_path / "index")}}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        assert httpx2.get(f"{gateway.base}/readyz", timeout=10).json()["status"] == "ready"
        async with Client(streamable_http_client(gateway.url)) as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == {"find_tool", "call_tool"}
            await find(client, "a")  # an answer (vectors only, or none), not an error
            called = await client.call_tool("call_tool", {"tool_name": "b_a", "arguments": {}})
    assert not called.is_error and called.content[0].text == "ok"  # type: ignore[union-attr]
