"""A backend that fails to answer a tools/call (an HTTP 5xx, a garbled body, a result failing validation), through
a real gateway process and SDK client: the agent gets a tool result with isError naming the backend and the status,
as it does for a timeout, the gateway logs the failed call, and the failure counts against the backend's circuit.
What the client got wrong (an unknown tool) and what the backend answered with (its own JSON-RPC error) stay
protocol errors."""

from __future__ import annotations

import re
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import running_gateway, write_config
from tests.test_backend_http_status import TOKEN, config, http_backend
from tests.test_breaker_invalid_answers import garbage_config
from tests.test_failure_recovery import backend, text

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def logged_errors(log: str, tool: str) -> int:
    return len(re.findall(rf"tool call {tool} by \S+: error in", " ".join(log.split())))


async def test_an_http_server_error_is_a_tool_error_result_naming_the_backend_and_the_status(tmp_path: Path) -> None:
    with http_backend() as url, running_gateway(write_config(tmp_path, config(url, failure_threshold=100))) as gateway:
        async with Client(gateway.url) as client:
            page = await client.call_tool("web_page", {})
            assert page.is_error and text(page) == "backend 'web' answered HTTP 502 Bad Gateway", text(page)
            boom = await client.call_tool("web_boom", {})
            message = text(boom)
            assert boom.is_error and message.startswith(
                "backend 'web' answered HTTP 500 Internal Server Error: database exploded"
            ), message
            assert TOKEN not in message and "you sent ***" in message and len(message) < 1000
            garbled = await client.call_tool("web_garbled", {})
            assert garbled.is_error and text(garbled).startswith("backend 'web': Failed to parse JSON response")
            # The backend's own JSON-RPC error, and a tool the client named wrong, stay protocol errors.
            with pytest.raises(MCPError) as refused:
                await client.call_tool("web_refuses", {})
            assert refused.value.error.code == -32050 and refused.value.error.message == "quota spent"
            with pytest.raises(MCPError) as unknown:
                await client.call_tool("web_nope", {})
            assert unknown.value.error.code == types.INVALID_PARAMS
            assert not (await client.call_tool("web_ok", {})).is_error
    log = gateway.output()
    for tool in ("web_page", "web_boom", "web_garbled"):
        assert logged_errors(log, tool) == 1, log
    assert TOKEN not in log


async def test_server_errors_returned_as_results_still_open_the_circuit(tmp_path: Path) -> None:
    with http_backend() as url, running_gateway(write_config(tmp_path, config(url, failure_threshold=2))) as gateway:
        async with Client(gateway.url) as client:
            assert (await client.call_tool("web_page", {})).is_error
            assert (await client.call_tool("web_boom", {})).is_error
            circuit = backend(gateway, "web")["circuit"]
            assert circuit["state"] == "open" and "HTTP 500" in circuit["reason"], circuit
            refused = await client.call_tool("web_ok", {})
            assert refused.is_error and "circuit open" in text(refused)


async def test_a_stdio_backends_invalid_or_garbled_result_is_a_tool_error_result(tmp_path: Path) -> None:
    with running_gateway(garbage_config(tmp_path, failure_threshold=100)) as gateway:
        async with Client(gateway.url) as client:
            invalid = await client.call_tool("junk_invalid", {})
            assert invalid.is_error and text(invalid).startswith("backend 'junk' answered with an invalid result: ")
            garbled = await client.call_tool("junk_garbled", {})
            assert garbled.is_error and text(garbled).startswith("backend 'junk' answered with a message of")
            assert backend(gateway, "junk")["circuit"]["consecutive_failures"] == 2
            assert not (await client.call_tool("junk_ok", {})).is_error
    log = gateway.output()
    assert logged_errors(log, "junk_invalid") == 1 and logged_errors(log, "junk_garbled") == 1, log
