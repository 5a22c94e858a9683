"""The audit's `mcp_initialize` of a 2025-11-25 client is written at its `initialize`, through a real gateway
over raw HTTP: a client that never sends `notifications/initialized` is audited too, one that sends it is
audited once, and the event's response size is the size of the `initialize` answer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import RAW_HEADERS, RAW_INITIALIZE, demo_backend, running_gateway, sse_messages, write_config

pytestmark = [pytest.mark.slow]


def initialize(url: str, client: str) -> tuple[dict[str, str], dict[str, Any]]:
    """A 2025-11-25 session opened with a bare `initialize`: the headers its requests carry, and its answer."""
    body = {**RAW_INITIALIZE, "params": {**RAW_INITIALIZE["params"], "clientInfo": {"name": client, "version": "3.1"}}}
    opened = httpx2.post(url, json=body, headers=RAW_HEADERS, timeout=30)
    assert opened.status_code == 200, opened.text
    headers = {**RAW_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    return headers, answer_of(opened)


def answer_of(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a POST, whether it came as JSON or as an SSE stream."""
    if response.headers["content-type"].startswith("application/json"):
        answer: dict[str, Any] = response.json()
        return answer
    return next(m for _, m in sse_messages(iter([*response.text.splitlines(), ""])) if m is not None and "id" in m)


def list_tools(url: str, headers: dict[str, str]) -> None:
    listed = httpx2.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers, timeout=30)
    assert listed.status_code == 200 and "tools" in answer_of(listed)["result"], listed.text


def events_of(path: Path, client: str, last: str = "mcp_tools_list") -> list[dict[str, Any]]:
    """The client's events once its `last` is written (the audit thread writes in batches)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        events = [json.loads(line) for line in lines if line.strip()]
        mine = [e for e in events if e["subjects"].get("client_name") == client]
        if any(e["type"] == last for e in mine):
            return mine
        time.sleep(0.05)
    raise AssertionError(f"no {last} event of {client} in {path}")


def test_initialize_is_audited_once_with_or_without_the_initialized_notification(tmp_path: Path) -> None:
    config = {
        "backends": [demo_backend("notes")],
        "telemetry": {"audit": {"enabled": True, "output": "audit.log"}},
    }
    audit = tmp_path / "audit.log"
    with running_gateway(write_config(tmp_path, config)) as gateway:
        silent, answer = initialize(gateway.url, "skips-initialized")  # no notifications/initialized
        list_tools(gateway.url, silent)
        polite, _ = initialize(gateway.url, "sends-initialized")
        notified = httpx2.post(
            gateway.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=polite, timeout=30
        )
        assert notified.status_code == 202
        notified = httpx2.post(  # repeated: still one session start
            gateway.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=polite, timeout=30
        )
        list_tools(gateway.url, polite)
        skipping = events_of(audit, "skips-initialized")
        sending = events_of(audit, "sends-initialized")

    for events in (skipping, sending):
        starts = [e for e in events if e["type"] == "mcp_initialize"]
        assert len(starts) == 1, [e["type"] for e in events]
        start, listed = starts[0], next(e for e in events if e["type"] == "mcp_tools_list")
        assert events.index(start) < events.index(listed)
        assert start["outcome"] == "success" and start["target"] == {"method": "initialize", "type": "other"}
        assert start["subjects"]["client_version"] == "3.1"
        assert start["subjects"]["caller_id"].startswith("session:")
        assert start["subjects"]["caller_id"] == listed["subjects"]["caller_id"]  # the session its requests are of
        assert start["metadata"]["extra"]["protocol_version"] == "2025-11-25"
        assert start["source"] == {"type": "network", "value": "127.0.0.1"}
    assert skipping[0]["subjects"]["caller_id"] != sending[0]["subjects"]["caller_id"]
    # The size of what `initialize` answered, as for every other event (it was 0).
    wire = json.dumps(answer["result"], separators=(",", ":"), ensure_ascii=False).encode()
    assert skipping[0]["metadata"]["extra"]["response_size_bytes"] == len(wire)
