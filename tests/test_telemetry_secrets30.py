"""Secrets and floods in what the gateway writes about its clients (session 30), through a real gateway:

- a resource URI's credentials (`?access_token=`, `user:password@`, even cut where an event cuts the URI) reach
  neither the audit event's target nor the span, and a tool argument's URL credentials and PEM private key reach
  no audit `data`;
- a forged `requestState` (the SDK's warning per request) and a `subscriptions/listen` id a client chose at
  megabytes write bounded log lines: one warning a minute, and an id cut short.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import Gateway, demo_backend, raw_session, running_gateway, write_config
from tests.test_telemetry_export import attributes, otlp_receiver, spans_of
from vmcp_opt.telemetry.redact import REDACTED, redacted_within

pytestmark = pytest.mark.slow

WAIT = 30.0  # seconds a poll may wait for what the gateway writes in the background (a bound, not a measure)
PEM_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5PEMSECRET4\n-----END OPENSSH PRIVATE KEY-----"
)
SECRETS = ("TOKSECRET1", "PWSECRET2", "PWSECRET3", "PEMSECRET4", "LONGSECRET5")
URIS = {
    "notes://note/x?access_token=TOKSECRET1": "notes://note/x?access_token=***",
    "https://admin:PWSECRET2@files.example.com/report.csv": "https://***@files.example.com/report.csv",
}
# A password past the 200 characters an event keeps of a target: the cut falls inside the URL's credentials.
LONG_URI = "https://admin:LONGSECRET5" + "x" * 300 + "@files.example.com/a"
MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
MODERN_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": MODERN,
}
# A 2026-07-28 backend whose `touch` publishes `n` updates of a URI to its listen streams (a busy resource).
WATCHED_BACKEND = """
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus

server = MCPServer("watched", subscriptions=InMemorySubscriptionBus())


@server.resource("notes://{name}")
def note(name: str) -> str:
    return f"note {name}"


@server.tool()
async def touch(uri: str, n: int, ctx: Context) -> str:
    for _ in range(n):
        await ctx.notify_resource_updated(uri)
    return f"touched {uri} {n} times"


server.run()
"""


_LISTEN_BACKLOG = "vmcp_opt.server.listen: listen stream"  # the gateway's line, not the backend's own stderr


def until(check: Callable[[], Any], what: str) -> Any:
    """`check()` once it is truthy; fails naming `what` after `WAIT` seconds."""
    deadline = time.monotonic() + WAIT
    while not (found := check()):
        assert time.monotonic() < deadline, f"never came: {what}"
        time.sleep(0.1)
    return found


def rpc(gateway: Gateway, headers: dict[str, str], method: str, params: dict[str, Any]) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
    return httpx2.post(gateway.url, json=body, headers=headers, timeout=60)


def audit_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_resource_uri_and_argument_credentials_reach_neither_audit_nor_spans(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    config = {
        "backends": [demo_backend("demo")],
        "telemetry": {
            "audit": {"enabled": True, "output": str(audit), "include_data": True, "flush_interval": 0},
            "tracing": {"enabled": True},
        },
        "health": {"interval": 600},
    }
    with otlp_receiver() as (endpoint, received, raw):
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with running_gateway(write_config(tmp_path, config), env=env) as gateway:
            headers = raw_session(gateway.url)
            for uri in [*URIS, LONG_URI]:
                rpc(gateway, headers, "resources/read", {"uri": uri})
            for text in ("postgres://app:PWSECRET3@db.internal:5432/prod", PEM_KEY):
                answer = rpc(
                    gateway,
                    headers,
                    "tools/call",
                    {"name": "demo_save_note", "arguments": {"title": "t", "text": text}},
                )
                assert answer.status_code == 200 and '"isError":true' not in answer.text, answer.text

            def written() -> list[dict[str, Any]]:
                events = audit_events(audit)
                reads = [e for e in events if e["type"] == "mcp_resource_read"]
                calls = [e for e in events if e["target"].get("name") == "demo_save_note"]
                return events if len(reads) == 3 and len(calls) == 2 else []

            events = until(written, "3 resource reads and 2 tool calls in the audit log")
            # The last request's span: the spans of those before it ended first, and are exported before it or with it.
            until(lambda: [s for s in spans_of(received) if s.name == "tools/call demo_save_note"][1:], "the spans")
            spans = spans_of(received)
    text = audit.read_text() + b"".join(raw).decode("latin-1")
    assert [secret for secret in SECRETS if secret in text] == []
    targets = [e["target"]["name"] for e in events if e["type"] == "mcp_resource_read"]
    assert targets[:2] == list(URIS.values())
    assert targets[2].startswith("https://***…(") and targets[2].endswith(f"({len(LONG_URI):,} chars)")
    span_uris = {attributes(s).get("mcp.resource.uri") for s in spans}
    assert set(URIS.values()) <= span_uris
    data = [e["data"]["request"]["text"] for e in events if e["target"].get("name") == "demo_save_note"]
    assert data == [f"postgres://{REDACTED}@db.internal:5432/prod", REDACTED]


def test_a_cut_through_url_credentials_or_a_private_key_keeps_no_half_of_them() -> None:
    """The audit log's `data` is cut past `max_data_bytes`: a credential the cut falls inside is blanked whole."""
    for text in (
        "postgres://app:" + "S" * 5000 + "@db.internal/prod",
        "-----BEGIN RSA PRIVATE KEY-----\n" + "S" * 5000 + "\n-----END RSA PRIVATE KEY-----",
        "note: -----BEGIN PRIVATE KEY-----\nSSSS never ended",
    ):
        kept = redacted_within({"text": text}, 100)
        assert "SSSS" not in json.dumps(kept.value), kept


def test_forged_request_state_warns_once_a_minute(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("demo")], "health": {"interval": 600}}
    with running_gateway(write_config(tmp_path, config), "--log-level", "warning") as gateway:
        before = gateway.output().count("requestState rejected")
        headers = {**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": "demo_whoami"}
        for _ in range(20):
            params = {
                "name": "demo_whoami",
                "arguments": {},
                "requestState": "x" * 40 + uuid.uuid4().hex,  # forged: it unseals under no key of ours
                "inputResponses": {},
                "_meta": MODERN_META,
            }
            answer = rpc(gateway, headers, "tools/call", params)
            assert answer.status_code in (200, 400), answer.text
        # Logged before each answer was written: every warning the requests caused is in the log now.
        assert gateway.output().count("requestState rejected") - before == 1


def test_a_listen_stream_id_of_a_megabyte_is_logged_cut(tmp_path: Path) -> None:
    backend = tmp_path / "watched_backend.py"
    backend.write_text(WATCHED_BACKEND)
    config = {"backends": [{"name": "watched", "command": sys.executable, "args": [str(backend)]}]}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        stream_id = "L" * 1_000_000
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": stream_id,
                "method": "subscriptions/listen",
                "params": {"notifications": {"resourceSubscriptions": ["notes://x"]}, "_meta": MODERN_META},
            }
        ).encode()
        head = "".join(
            f"{name}: {value}\r\n"
            for name, value in {
                "Host": f"127.0.0.1:{gateway.port}",
                **MODERN_HEADERS,
                "Mcp-Method": "subscriptions/listen",
                "Content-Length": len(body),
            }.items()
        )
        # A client that opens the stream and reads none of it: the gateway's backlog for it fills.
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", gateway.port))
        try:
            client.sendall(f"POST /mcp HTTP/1.1\r\n{head}\r\n".encode() + body)
            assert client.recv(12) == b"HTTP/1.1 200"
            headers = {**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": "watched_touch"}
            touch = {"name": "watched_touch", "arguments": {"uri": "notes://x", "n": 800}, "_meta": MODERN_META}

            def backlog_full() -> list[str]:
                lines = [
                    line for line in gateway.output().splitlines() if _LISTEN_BACKLOG in line and "backlog full" in line
                ]
                if not lines:
                    assert rpc(gateway, headers, "tools/call", touch).status_code == 200
                return lines

            lines = until(backlog_full, "the listen stream's 'backlog full' warning")
        finally:
            client.close()
    assert len(lines) == 1 and len(lines[0]) < 500, f"{len(lines)} lines, the first {len(lines[0]):,} characters"
    assert f"({len(stream_id):,} characters)" in lines[0]
