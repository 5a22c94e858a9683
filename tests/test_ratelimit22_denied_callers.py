"""A tool's shared rate limit (`rate_limits.per_tool.<tool>` without `per_caller`) is spent only by calls the
policy lets run: a caller forbidden the tool cannot empty the bucket and take the tool away from everyone.

A real `vmcp serve` over the demo backend behind API keys and a Cedar policy that forbids the `guest` caller
two tools, each with a shared bucket of three tokens that refills one token per 1000 s (within a test, the
burst is the whole budget). Before, the HTTP gate took a call's tokens before the policy was asked: the
guest's first three calls were refused by the policy but emptied the bucket, the rest were 429, and so
was every permitted caller's call after them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest

from tests.support import Gateway, bearer_client, demo_backend, policed_config, running_gateway

BURST = 3
GUARDED = ("notes_search_notes", "notes_save_note")
LIMITS = {"per_tool": {tool: {"rate": 0.001, "burst": BURST} for tool in GUARDED}}
POLICY = """\
permit(principal, action, resource);
forbid(principal in Group::"guest", action == Action::"call_tool", resource == Tool::"notes_search_notes");
forbid(principal in Group::"guest", action == Action::"call_tool", resource == Tool::"notes_save_note");
"""
ARGUMENTS = {"notes_search_notes": {"query": "x"}, "notes_save_note": {"title": "t", "text": "x"}}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    directory: Path = tmp_path_factory.mktemp("ratelimit22")
    config = {"backends": [demo_backend("notes")], "rate_limits": LIMITS}
    path, keys = policed_config(directory, {"guest": ["guest"], "dev": ["dev"]}, POLICY, config)
    with running_gateway(path, "--log-level", "warning") as running:
        yield running, keys


def modern_call(gateway: Gateway, key: str, tool: str, request_id: int) -> httpx2.Response:
    """A 2026-07-28 `tools/call` of `tool` with the API key `key` (no session: the raw status and headers)."""
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {key}",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    params = {"name": tool, "arguments": ARGUMENTS[tool], "_meta": META}
    message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    return httpx2.post(gateway.url, json=message, headers=headers, timeout=30)


def assert_not_permitted(answer: httpx2.Response, tool: str) -> None:
    """The policy's refusal, as a call of a forbidden tool is answered with no rate limit configured: as a call
    of a tool that does not exist."""
    assert answer.status_code == 400, (answer.status_code, answer.text)
    body: dict[str, Any] = answer.json()
    assert body["error"] == {"code": -32602, "message": f"Unknown tool: '{tool}'"}, body


def guest_floods(gateway: Gateway, keys: dict[str, str], tool: str) -> None:
    for request_id in range(1, 11):
        assert_not_permitted(modern_call(gateway, keys["guest"], tool, request_id), tool)


def test_a_forbidden_callers_calls_leave_the_shared_bucket_to_permitted_callers(
    gateway: tuple[Gateway, dict[str, str]],
) -> None:
    running, keys = gateway
    guest_floods(running, keys, "notes_search_notes")

    async def permitted_call() -> types.CallToolResult:
        async with bearer_client(running.url, keys["dev"]) as client:
            return await client.call_tool("notes_search_notes", {"query": "x"})

    result = anyio.run(permitted_call)
    assert not result.is_error, result


def test_a_permitted_caller_past_the_bucket_still_gets_429(gateway: tuple[Gateway, dict[str, str]]) -> None:
    running, keys = gateway
    guest_floods(running, keys, "notes_save_note")
    answers = [modern_call(running, keys["dev"], "notes_save_note", n) for n in range(1, BURST + 2)]
    assert [a.status_code for a in answers] == [200] * BURST + [429], [a.text for a in answers]
    refused = answers[-1]
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["data"]["limit"] == "rate_limits.per_tool.notes_save_note", error
    assert error["data"]["retry_after"] > 0, error
    # The guest is still refused by the policy, not by the empty bucket.
    assert_not_permitted(modern_call(running, keys["guest"], "notes_save_note", 99), "notes_save_note")
