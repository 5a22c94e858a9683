"""A rate-limited tool call over HTTP is refused with 429 and `Retry-After`; over stdio with the JSON-RPC error.

A real `vmcp serve` with the demo backend, a raw HTTP client (to read the status and headers the SDK
client hides) and the real SDK client over HTTP and stdio.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, demo_backend, running_gateway, write_config

BURST = 2
LIMITS = {
    # One token per 1000 s: within a test, the burst is the budget.
    "per_caller": {"rate": 0.001, "burst": BURST},
    "per_tool": {
        "notes_whoami": {"rate": 0.001, "burst": 1, "per_caller": True},
        # One bucket for everyone: binds a 2026-07-28 client without a credential (each request a new caller).
        "notes_save_note": {"rate": 0.001, "burst": 1},
    },
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rate-limits-http")
    return write_config(directory, {"backends": [demo_backend("notes")], "rate_limits": LIMITS})


@pytest.fixture(scope="module")
def gateway(config: Path) -> Iterator[Gateway]:
    with running_gateway(config) as running:
        yield running


def open_session(http: httpx2.Client, gateway: Gateway) -> dict[str, str]:
    """A 2025-11-25 session opened by hand: the headers its later requests carry."""
    hello = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    answer = http.post(gateway.url, json=hello, headers=HEADERS)
    assert answer.status_code == 200, answer.text
    headers = {**HEADERS, "mcp-session-id": answer.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    done = http.post(gateway.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert done.status_code == 202
    return headers


def call(http: httpx2.Client, gateway: Gateway, headers: dict[str, str], request_id: int, tool: str) -> httpx2.Response:
    message: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"query": "x"} if tool == "notes_search_notes" else {}},
    }
    return http.post(gateway.url, json=message, headers=headers)


def client_from(address: str) -> httpx2.Client:
    """An HTTP client whose connections come from `address` (any 127.x.y.z is loopback on Linux): without a
    verified subject a caller's budget is its address's, so each test takes an address of its own."""
    return httpx2.Client(transport=httpx2.HTTPTransport(local_address=address), timeout=30)


def test_a_refused_call_is_429_with_retry_after_and_the_json_rpc_error(gateway: Gateway) -> None:
    with client_from("127.0.0.2") as http:
        headers = open_session(http, gateway)
        answers = [call(http, gateway, headers, i, "notes_search_notes") for i in range(1, BURST + 2)]
        # The router did not take the tokens a second time: exactly BURST calls pass.
        assert [a.status_code for a in answers] == [200] * BURST + [429]
        refused = answers[-1]
        assert int(refused.headers["retry-after"]) >= 1
        body = refused.json()
        assert body["id"] == BURST + 1
        assert body["error"]["data"]["limit"] == "rate_limits.per_caller"
        assert body["error"]["data"]["retry_after"] > 0
        assert "try again" in body["error"]["message"]
        # Another address has a budget of its own.
        with client_from("127.0.0.3") as elsewhere:
            assert (
                call(elsewhere, gateway, open_session(elsewhere, gateway), 1, "notes_search_notes").status_code == 200
            )


def modern_call(http: httpx2.Client, gateway: Gateway, request_id: int) -> httpx2.Response:
    """A 2026-07-28 tools/call: no session, the client's details in `_meta`."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    params = {"name": "notes_search_notes", "arguments": {"query": "x"}, "_meta": meta}
    headers = {**HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}
    message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    return http.post(gateway.url, json=message, headers={**headers, "mcp-name": "notes_search_notes"})


def test_an_anonymous_client_cannot_renew_its_budget_with_new_sessions_or_none(gateway: Gateway) -> None:
    """Before, each session had a budget of its own, and a request without one a fresh bucket every time."""
    with client_from("127.0.0.4") as http:
        first = modern_call(http, gateway, 1)
        assert first.status_code == 200 and '"result"' in first.text, first.text
        assert call(http, gateway, open_session(http, gateway), 2, "notes_search_notes").status_code == 200
        refused = [
            modern_call(http, gateway, 3),
            call(http, gateway, open_session(http, gateway), 4, "notes_search_notes"),
        ]
        assert [r.status_code for r in refused] == [429, 429]
        assert all(r.json()["error"]["data"]["limit"] == "rate_limits.per_caller" for r in refused)


def test_a_tools_refusal_does_not_spend_the_callers_budget(gateway: Gateway) -> None:
    with client_from("127.0.0.5") as http:
        headers = open_session(http, gateway)
        statuses = [call(http, gateway, headers, i, "notes_whoami").status_code for i in range(1, 4)]
        assert statuses == [200, 429, 429]
        refused = call(http, gateway, headers, 4, "notes_whoami").json()
        assert refused["error"]["data"]["limit"] == "rate_limits.per_tool.notes_whoami"
        # whoami took one of the caller's BURST tokens; its refusals took none.
        assert call(http, gateway, headers, 5, "notes_search_notes").status_code == 200
        assert call(http, gateway, headers, 6, "notes_search_notes").status_code == 429


def test_the_sdk_client_gets_the_refusal_as_an_error_with_its_data(gateway: Gateway) -> None:
    async def main() -> dict[str, Any]:
        async with Client(gateway.url) as client:
            note = {"title": "a", "text": "b"}
            assert not (await client.call_tool("notes_save_note", note)).is_error
            with pytest.raises(MCPError) as refused:
                await client.call_tool("notes_save_note", note)
        data = refused.value.error.data
        assert isinstance(data, dict)
        return data

    data = anyio.run(main)
    assert data["limit"] == "rate_limits.per_tool.notes_save_note" and data["retry_after"] > 0


def test_over_stdio_a_refusal_is_the_json_rpc_error(config: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)]
    )

    async def main() -> dict[str, Any]:
        async with Client(params) as client:
            for _ in range(BURST):
                assert not (await client.call_tool("notes_search_notes", {"query": "x"})).is_error
            with pytest.raises(MCPError) as refused:
                await client.call_tool("notes_search_notes", {"query": "x"})
        data = refused.value.error.data
        assert isinstance(data, dict)
        return data

    data = anyio.run(main)
    assert data["limit"] == "rate_limits.per_caller" and data["retry_after"] > 0
