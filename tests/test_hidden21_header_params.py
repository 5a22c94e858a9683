"""A tool a caller's Cedar policy hides stays hidden from the 2026-07-28 `Mcp-Param` header check.

The SDK's transport checks a `tools/call`'s `Mcp-Param-*` headers against the tool's input schema before any
handler runs. Before, the gateway's schema lookup ignored the caller: a caller who may not see a tool got a
400 `HEADER_MISMATCH` naming the tool's header-mapped parameter. Now the check treats the tool as it treats one
that does not exist, and the handler refuses the call as it refuses any call of a hidden tool; a caller who may
call the tool still gets the `HEADER_MISMATCH`.

A real `vmcp serve` with API keys and a Cedar policy, a real backend on the SDK whose tools map arguments to
headers, and plain HTTP (httpx) requests of the 2026-07-28 era.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import Gateway, policed_config, running_gateway, write_config

# A backend on the SDK whose two tools map their `region` argument to the `Mcp-Param-Region` header.
HEADER_BACKEND = """
import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

SCHEMA = {"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}
TOOLS = [types.Tool(name="secret", input_schema=SCHEMA), types.Tool(name="open", input_schema=SCHEMA)]


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx, params):
    region = (params.arguments or {}).get("region")
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"{params.name} in {region}")])


async def main():
    server = Server("regions", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


anyio.run(main)
"""

POLICY = """\
permit(principal, action, resource);
forbid(principal in Group::"guest", action, resource == Tool::"r_secret");
"""

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def regions_backend(directory: Path) -> dict[str, Any]:
    script = directory / "regions.py"
    script.write_text(HEADER_BACKEND, encoding="utf-8")
    return {"name": "r", "command": sys.executable, "args": [str(script)]}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    directory: Path = tmp_path_factory.mktemp("hidden21")
    config = {"backends": [regions_backend(directory)]}
    path, keys = policed_config(directory, {"guest": ["guest"], "dev": ["dev"]}, POLICY, config)
    with running_gateway(path, "--log-level", "warning") as running:
        yield running, keys


def modern_call(gateway: Gateway, key: str | None, tool: str, header_region: str | None) -> tuple[int, dict[str, Any]]:
    """A 2026-07-28 `tools/call` of `tool` with `region: "eu"` in the body and, unless None, `header_region`
    in its `Mcp-Param-Region` header: the HTTP status and the JSON-RPC answer with its id dropped."""
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if header_region is not None:
        headers["Mcp-Param-Region"] = header_region
    params = {"name": tool, "arguments": {"region": "eu"}, "_meta": META}
    message = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    answer = httpx2.post(gateway.url, json=message, headers=headers, timeout=30)
    assert answer.headers["content-type"].startswith("application/json"), answer.text
    body = answer.json()
    body.pop("id", None)
    return answer.status_code, body


def test_a_hidden_tools_mismatched_header_is_answered_as_its_call_is(gateway: tuple[Gateway, dict[str, str]]) -> None:
    """Past the transport, as for a tool that does not exist: the handler refuses the hidden tool as it refuses
    any call of it (as a tool that does not exist), and nothing names its header-mapped argument."""
    running, keys = gateway
    refused = modern_call(running, keys["guest"], "r_secret", "eu")  # headers that agree: the handler's refusal
    assert refused[0] == 400 and refused[1]["error"] == {"code": -32602, "message": "Unknown tool: 'r_secret'"}, refused
    for header in ("us", None):  # a header that disagrees, and none for an argument that wants one
        answer = modern_call(running, keys["guest"], "r_secret", header)
        assert answer == refused, (header, answer)
        assert "Mcp-Param" not in str(answer) and "region" not in str(answer).lower(), answer


def test_a_tool_that_does_not_exist_goes_past_the_header_check_too(gateway: tuple[Gateway, dict[str, str]]) -> None:
    running, keys = gateway
    status, body = modern_call(running, keys["guest"], "r_nowhere", "us")
    assert status == 400 and body["error"]["message"] == "Unknown tool: 'r_nowhere'", body


def test_a_caller_who_may_see_the_tool_still_gets_the_header_mismatch(
    gateway: tuple[Gateway, dict[str, str]],
) -> None:
    running, keys = gateway
    for key, tool in ((keys["dev"], "r_secret"), (keys["guest"], "r_open")):
        status, body = modern_call(running, key, tool, "us")
        assert status == 400, body
        assert body["error"]["code"] == -32020 and "Mcp-Param-Region" in body["error"]["message"], body


def test_a_matching_header_calls_the_tool_it_may_see(gateway: tuple[Gateway, dict[str, str]]) -> None:
    running, keys = gateway
    status, body = modern_call(running, keys["dev"], "r_secret", "eu")
    assert status == 200 and body["result"]["content"][0]["text"] == "secret in eu", body


def test_without_a_policy_the_transport_still_checks_the_headers(tmp_path: Path) -> None:
    """No policy hides a tool, so the transport's own check, before any handler, keeps the schema lookup."""
    path = write_config(tmp_path, {"backends": [regions_backend(tmp_path)]})
    with running_gateway(path, "--log-level", "warning") as running:
        status, body = modern_call(running, None, "r_secret", "us")
        matching = modern_call(running, None, "r_secret", "eu")
    assert status == 400 and body["error"]["code"] == -32020 and "Mcp-Param-Region" in body["error"]["message"], body
    assert matching[0] == 200 and matching[1]["result"]["content"][0]["text"] == "secret in eu", matching
