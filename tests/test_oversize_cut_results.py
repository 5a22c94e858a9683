"""A tools/call answer over `limits.max_result_bytes` that the transport cuts off while it arrives (a stdio line
dropped, an HTTP body not read further), through a real gateway process and SDK client: the agent gets a tool
result with isError naming the backend, the cap and the setting, as it does for a parsed result over the cap or a
timeout, and the backend's circuit does not count it (the size is the gateway's policy, not the backend's health).
A prompt's answer cut off the same way stays a protocol error: prompts have no error result."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import running_gateway, write_config
from tests.test_failure_recovery import backend
from tests.test_hostile_backend import hostile_backend, text

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CAP = 100_000  # limits.max_result_bytes: 1,148,576 bytes with the envelope's room on either transport
# A circuit that opens at the first failure counted: any count shows.
ONE_FAILURE_OPENS = {"circuit_breaker": {"failure_threshold": 1, "cooldown": 3600}}

# A backend on the SDK whose prompt `big` answers with a message of `bytes` characters.
BIG_PROMPT_SERVER = """
import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

PROMPT = types.Prompt(name="big", arguments=[types.PromptArgument(name="bytes", required=True)])


async def list_prompts(ctx, params):
    return types.ListPromptsResult(prompts=[PROMPT])


async def get_prompt(ctx, params):
    content = types.TextContent(type="text", text="p" * int(params.arguments["bytes"]))
    return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=content)])


async def main():
    server = Server("prompts", on_list_prompts=list_prompts, on_get_prompt=get_prompt)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


anyio.run(main)
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gateway_config(backends: list[dict[str, Any]]) -> dict[str, Any]:
    # Only calls feed the circuit here: no health check runs within the test.
    return {
        "backends": backends,
        "limits": {"max_result_bytes": CAP},
        "health": {"interval": 3600},
        "failure": ONE_FAILURE_OPENS,
    }


def assert_names_the_cap(result: types.CallToolResult, backend_name: str) -> None:
    message = text(result)
    assert result.is_error, message
    assert f"backend '{backend_name}'" in message and "limits.max_result_bytes" in message, message
    assert len(message) < 1000, message


async def test_a_stdio_answer_dropped_for_its_size_is_a_tool_error_result(tmp_path: Path) -> None:
    script = tmp_path / "big_prompt_server.py"
    script.write_text(BIG_PROMPT_SERVER, encoding="utf-8")
    prompts = {"name": "pr", "command": sys.executable, "args": [str(script)]}
    with running_gateway(write_config(tmp_path, gateway_config([hostile_backend(), prompts]))) as gateway:
        async with Client(gateway.url) as client:
            # Past the stdio line cap: dropped while read, whichever end of the line its id is at.
            for id_last in (False, True):
                with anyio.fail_after(60):
                    dropped = await client.call_tool("hostile_big", {"bytes": 2_000_000, "id_last": id_last})
                assert_names_the_cap(dropped, "hostile")
                assert f"({CAP:,} bytes)" in text(dropped) and "dropped" in text(dropped)
            assert backend(gateway, "hostile")["circuit"]["state"] == "closed"
            assert not (await client.call_tool("hostile_echo", {"message": "after"})).is_error
            # A prompt has no error result: its answer cut off the same way stays a protocol error.
            with anyio.fail_after(60), pytest.raises(MCPError) as refused:
                await client.get_prompt("pr_big", {"bytes": "2000000"})
            assert refused.value.code == types.INTERNAL_ERROR
            assert "backend 'pr'" in str(refused.value) and "limits.max_result_bytes" in str(refused.value)
            assert backend(gateway, "pr")["circuit"]["state"] == "closed"


@contextmanager
def hostile_upstream(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """An upstream gateway serving the hostile backend over streamable HTTP with room for 64 MiB: its backend
    entry, named "up"."""
    (tmp_path / "up").mkdir()
    config = {"backends": [hostile_backend()], "limits": {"max_result_bytes": 64 * 2**20}}
    with running_gateway(write_config(tmp_path / "up", config)) as upstream:
        yield {"name": "up", "transport": "streamable-http", "url": upstream.url}


async def test_an_http_answer_not_read_past_the_cap_is_a_tool_error_result(tmp_path: Path) -> None:
    with (
        hostile_upstream(tmp_path) as up,
        running_gateway(write_config(tmp_path, gateway_config([up]))) as gateway,
    ):
        async with Client(gateway.url) as client:
            for _ in range(2):
                with anyio.fail_after(60):
                    too_big = await client.call_tool("up_hostile_big", {"bytes": 5_000_000})
                assert_names_the_cap(too_big, "up")
                assert "not read further" in text(too_big), text(too_big)
            assert backend(gateway, "up")["circuit"]["state"] == "closed"
            assert not (await client.call_tool("up_hostile_echo", {"message": "after"})).is_error
    log = gateway.output()
    assert "Traceback" not in log
    assert sum("tool call up_hostile_big by" in line and "error in" in line for line in log.splitlines()) == 2, log
