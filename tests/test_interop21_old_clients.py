"""Clients of older protocol versions, written by hand over a real gateway (HTTP and `vmcp serve --stdio`) with a
real stdio backend: a 2025-03-26 client's JSON-RPC batches are served (that version requires servers to accept
them), and an `initialize` the gateway cannot read is refused naming the field, without opening a session."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import NODE_BIN, Gateway, demo_backend, running_gateway, sse_messages, write_config

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
CLIENT = {"name": "old-client", "version": "1"}


def initialize(version: str, request_id: int | str = 1) -> dict[str, Any]:
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": CLIENT}
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("interop21")
    # Two sessions per address: a leaked session per refused initialize would lock this client out by the third.
    config = write_config(directory, {"backends": [demo_backend("demo")], "limits": {"max_sessions_per_address": 2}})
    with running_gateway(config) as running:
        yield running


def post(gateway: Gateway, body: Any, session: str | None = None, version: str | None = None) -> httpx2.Response:
    headers = dict(HEADERS)
    if session is not None:
        headers["mcp-session-id"] = session
    if version is not None:
        headers["mcp-protocol-version"] = version
    return httpx2.post(gateway.url, content=json.dumps(body), headers=headers, timeout=30)


def opened(gateway: Gateway, version: str) -> str:
    """A session opened as a client of `version` does (no MCP-Protocol-Version before 2025-06-18)."""
    answer = post(gateway, initialize(version))
    assert answer.status_code == 200, answer.text
    session = answer.headers["mcp-session-id"]
    assert post(gateway, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session).status_code == 202
    return session


def test_an_unreadable_initialize_names_the_field_and_holds_no_session(gateway: Gateway) -> None:
    bad = initialize("2025-03-26")
    del bad["params"]["clientInfo"]
    for _ in range(3):
        answer = post(gateway, bad)
        assert answer.status_code == 400
        assert "mcp-session-id" not in answer.headers
        error = answer.json()
        assert error["id"] == 1
        assert error["error"]["code"] == -32602
        assert "params.clientInfo: Field required" in error["error"]["message"]
    # Three refusals held none of the address's two session slots: a good initialize still opens one.
    session = opened(gateway, "2025-03-26")
    httpx2.delete(gateway.url, headers={"mcp-session-id": session}, timeout=30)


def test_a_2025_03_26_batch_is_answered_with_one_answer_per_request(gateway: Gateway) -> None:
    session = opened(gateway, "2025-03-26")
    try:
        batch = [
            {"jsonrpc": "2.0", "id": "p", "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
            {"jsonrpc": "2.0", "id": 7, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": "x", "method": "no/such/method"},
        ]
        answer = post(gateway, batch, session)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/event-stream")  # one event per answer, as it comes
        events = [message for _, message in sse_messages(iter(answer.text.splitlines())) if message is not None]
        assert [item["id"] for item in events] == ["p", 7, "x"]  # one message at a time, in the batch's order
        answers = {item["id"]: item for item in events}
        assert answers["p"]["result"] == {}
        assert "demo_slow_echo" in [tool["name"] for tool in answers[7]["result"]["tools"]]
        assert answers["x"]["error"]["code"] == -32601
    finally:
        httpx2.delete(gateway.url, headers={"mcp-session-id": session}, timeout=30)


def test_a_batch_from_a_later_version_is_refused_saying_why(gateway: Gateway) -> None:
    session = opened(gateway, "2025-11-25")
    try:
        answer = post(gateway, [{"jsonrpc": "2.0", "id": 1, "method": "ping"}], session, "2025-11-25")
        assert answer.status_code == 400
        message = answer.json()["error"]["message"]
        assert "batches are not part of protocol version '2025-11-25'" in message
        assert "2025-03-26" in message
    finally:
        httpx2.delete(gateway.url, headers={"mcp-session-id": session}, timeout=30)


def test_over_stdio_a_batch_is_served_and_a_bad_initialize_names_the_field(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("demo")]})
    bad = initialize("2025-03-26", "bad")
    del bad["params"]["clientInfo"]
    lines = [
        bad,
        initialize("2025-03-26", "good"),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        [{"jsonrpc": "2.0", "id": "p", "method": "ping"}, {"jsonrpc": "2.0", "id": "t", "method": "tools/list"}],
    ]
    result = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)],
        input=b"".join(json.dumps(line).encode() + b"\n" for line in lines),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    answers = {item.get("id"): item for item in map(json.loads, result.stdout.splitlines()) if "id" in item}
    assert answers["bad"]["error"]["code"] == -32602
    assert "params.clientInfo: Field required" in answers["bad"]["error"]["message"]
    assert answers["good"]["result"]["protocolVersion"] == "2025-03-26"
    assert answers["p"]["result"] == {}
    assert "demo_slow_echo" in [tool["name"] for tool in answers["t"]["result"]["tools"]]


@pytest.fixture(scope="module")
def linking_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway over server-everything (TypeScript SDK), whose `get-resource-links` tool answers resource links."""
    everything = NODE_BIN / "mcp-server-everything"
    if not everything.exists():
        pytest.skip("server-everything is not installed (npm ci)")
    config = write_config(
        tmp_path_factory.mktemp("interop21-links"), {"backends": [{"name": "everything", "command": str(everything)}]}
    )
    with running_gateway(config) as running:
        yield running


@pytest.mark.parametrize(("version", "linked"), [("2024-11-05", False), ("2025-03-26", False), ("2025-11-25", True)])
def test_resource_links_reach_only_clients_whose_version_has_them(
    linking_gateway: Gateway, version: str, linked: bool
) -> None:
    session = opened(linking_gateway, version)
    try:
        call = {"name": "everything_get-resource-links", "arguments": {"count": 2}}
        header = version if version >= "2025-06-18" else None
        answer = post(
            linking_gateway, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}, session, header
        )
        blocks = answer.json()["result"]["content"]
        assert len(blocks) == 3
        types = {block["type"] for block in blocks}
        if linked:
            assert "resource_link" in types
        else:
            assert types == {"text"}  # what a 2025-03-26 client's content union can read
            assert "<demo://resource/dynamic/blob/1>" in blocks[1]["text"]
    finally:
        httpx2.delete(linking_gateway.url, headers={"mcp-session-id": session}, timeout=30)
