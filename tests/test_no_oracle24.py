"""No oracle: a caller the policy refuses an item gets exactly the answer it gets for a name that does not exist.

Before, a refused call was `-32600 "not permitted: caller 'guest' may not use tool 'notes_whoami': …"` while an
unknown name was `-32602 "Unknown tool: …"`, so a caller could find the tools, prompts and resources hidden from it
by probing names. Now the whole answer (HTTP status, JSON-RPC code, message, data, suggestions) is the unknown
name's, and the operator still sees the refusal in the audit log.

A real `vmcp serve` with API keys and a Cedar policy over the demo backend, the optimizer and the audit log on,
and raw HTTP requests of both protocol eras (a 2025-11-25 session and stateless 2026-07-28 requests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import (
    RAW_HEADERS,
    RAW_INITIALIZE,
    Gateway,
    demo_backend,
    policed_config,
    running_gateway,
)

pytestmark = pytest.mark.slow

# The guest may do anything but with one tool, one prompt and one resource of the demo backend.
POLICY = """\
permit(principal, action, resource);
forbid(principal in Group::"guest", action, resource == Tool::"notes_whoami");
forbid(principal in Group::"guest", action, resource == Prompt::"notes_summarize_notes");
forbid(principal in Group::"guest", action, resource == Resource::"notes://all");
forbid(principal in Group::"reader", action == Action::"complete", resource == Prompt::"notes_summarize_notes");
"""
MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
# The params key each method names its item by, mirrored in the 2026-07-28 `Mcp-Name` header.
NAMED_BY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

Params = Callable[[str], dict[str, Any]]
# (case, method, params naming the item, the forbidden item, a made-up item of the same kind)
CASES: list[tuple[str, str, Params, str, str]] = [
    ("tool", "tools/call", lambda n: {"name": n, "arguments": {}}, "notes_whoami", "notes_nowhere"),
    # A spelling of the hidden tool's name: no "did you mean" names it.
    ("tool spelt otherwise", "tools/call", lambda n: {"name": n, "arguments": {}}, "Notes-WhoAmI", "Notes-Nowhere"),
    (
        "tool through call_tool",
        "tools/call",
        lambda n: {"name": "call_tool", "arguments": {"tool_name": n, "arguments": {}}},
        "notes_whoami",
        "notes_nowhere",
    ),
    ("prompt", "prompts/get", lambda n: {"name": n}, "notes_summarize_notes", "notes_nowhere"),
    ("resource", "resources/read", lambda n: {"uri": n}, "notes://all", "nowhere://all"),
    (
        "prompt completion",
        "completion/complete",
        lambda n: {"ref": {"type": "ref/prompt", "name": n}, "argument": {"name": "style", "value": "s"}},
        "notes_summarize_notes",
        "notes_nowhere",
    ),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str], Path]]:
    directory = tmp_path_factory.mktemp("no-oracle24")
    config = {
        "backends": [demo_backend("notes")],
        "optimizer": {"enabled": True},
        "telemetry": {"audit": {"enabled": True, "output": "audit.log"}},
    }
    path, keys = policed_config(
        directory, {"guest": ["guest"], "staff": ["staff"], "reader": ["reader"]}, POLICY, config
    )
    with running_gateway(path, "--log-level", "warning") as running:
        yield running, keys, directory / "audit.log"


class Era:
    """Raw JSON-RPC requests as one caller of one protocol era sends them: each answer as (HTTP status, the
    message without its id)."""

    def __init__(self, gateway: Gateway, key: str, version: str) -> None:
        self.url = gateway.url
        self.version = version
        self.headers = {**RAW_HEADERS, "Authorization": f"Bearer {key}"}
        self.next_id = 1
        if version == HANDSHAKE:
            self._open_session()

    def _open_session(self) -> None:
        opened = httpx2.post(self.url, json=RAW_INITIALIZE, headers=self.headers, timeout=30)
        assert opened.status_code == 200, opened.text
        self.headers |= {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": HANDSHAKE}
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert httpx2.post(self.url, json=initialized, headers=self.headers, timeout=30).status_code == 202

    def ask(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        headers = dict(self.headers)
        if self.version == MODERN:
            params = {**params, "_meta": META}
            headers |= {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
            if method in NAMED_BY:
                headers["Mcp-Name"] = params[NAMED_BY[method]]
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        answer = httpx2.post(self.url, json=message, headers=headers, timeout=30)
        body = answer.text
        data = [line[5:] for line in body.splitlines() if line.startswith("data:") and line[5:].strip()]
        parsed: dict[str, Any] = json.loads(data[-1]) if data else json.loads(body)
        assert parsed.pop("id") == self.next_id, parsed
        return answer.status_code, parsed


@pytest.mark.parametrize("version", [HANDSHAKE, MODERN])
@pytest.mark.parametrize(("case", "method", "params", "forbidden", "made_up"), CASES, ids=[c[0] for c in CASES])
def test_a_refused_caller_is_answered_as_for_a_name_that_does_not_exist(
    gateway: tuple[Gateway, dict[str, str], Path],
    version: str,
    case: str,
    method: str,
    params: Params,
    forbidden: str,
    made_up: str,
) -> None:
    running, keys, _ = gateway
    guest = Era(running, keys["guest"], version)
    refused = guest.ask(method, params(forbidden))
    unknown = guest.ask(method, params(made_up))
    assert json.dumps(refused).replace(forbidden, made_up) == json.dumps(unknown), (refused, unknown)
    if case == "tool through call_tool":  # call_tool's own error result for a name it does not know
        assert refused[1]["result"]["isError"], refused
    else:
        assert "error" in refused[1], refused
    # The item exists: a caller the policy lets use it is served.
    staff = Era(running, keys["staff"], version).ask(method, params(forbidden))
    if case != "tool spelt otherwise":
        assert "result" in staff[1] and not staff[1]["result"].get("isError"), staff


def test_a_refused_subscription_is_answered_as_for_a_uri_nothing_serves(
    gateway: tuple[Gateway, dict[str, str], Path],
) -> None:
    running, keys, _ = gateway
    guest = Era(running, keys["guest"], HANDSHAKE)
    refused = guest.ask("resources/subscribe", {"uri": "notes://all"})
    unknown = guest.ask("resources/subscribe", {"uri": "nowhere://all"})
    assert "error" in refused[1], refused
    assert json.dumps(refused).replace("notes://all", "nowhere://all") == json.dumps(unknown), (refused, unknown)


def test_the_audit_log_still_records_each_refusal_as_denied(gateway: tuple[Gateway, dict[str, str], Path]) -> None:
    running, keys, audit = gateway
    guest = Era(running, keys["guest"], HANDSHAKE)
    guest.ask("tools/call", {"name": "notes_whoami", "arguments": {}})
    guest.ask("prompts/get", {"name": "notes_summarize_notes"})
    guest.ask("resources/read", {"uri": "notes://all"})
    guest.ask("tools/call", {"name": "call_tool", "arguments": {"tool_name": "notes_whoami", "arguments": {}}})
    wanted = {
        ("vmcp_call_tool", "call_tool"),  # the client's own request, answered as an unknown name, was refused
        ("mcp_tool_call", "notes_whoami"),
        ("mcp_prompt_get", "notes_summarize_notes"),
        ("mcp_resource_read", "notes://all"),
    }
    deadline = time.monotonic() + 30  # the audit thread writes off the request path
    while True:
        events = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
        denied = {
            (e["type"], e["target"].get("name") or e["target"].get("uri"))
            for e in events
            if e["outcome"] == "denied" and e["subjects"].get("user_id") == "guest"
        }
        if wanted <= denied or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert wanted <= denied, (wanted - denied, [(e["type"], e["target"], e["outcome"]) for e in events])


@pytest.mark.anyio
async def test_a_listen_streams_refused_resource_is_left_out_and_audited_as_a_refused_subscription(
    gateway: tuple[Gateway, dict[str, str], Path],
) -> None:
    running, keys, audit = gateway
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {keys['guest']}"}, timeout=60)
    client = Client(streamable_http_client(running.url, http_client=http), mode=MODERN)  # type: ignore[arg-type]
    async with http, client, client.listen(resource_subscriptions=["notes://all", "nowhere://all"]) as listening:
        assert not listening.honored.resource_subscriptions  # promised neither: as a made-up URI is not
    deadline = time.monotonic() + 30  # the audit thread writes off the request path
    while True:
        events = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
        refused = [
            e["target"]
            for e in events
            if e["outcome"] == "denied"
            and e["subjects"].get("user_id") == "guest"
            and e["target"]["method"] == "resources/subscribe"
            and e["metadata"]["extra"].get("protocol_version") == MODERN  # not the 2025-11-25 test's
        ]
        if refused or time.monotonic() > deadline:
            break
        await anyio.sleep(0.05)
    assert refused == [{"method": "resources/subscribe", "type": "resource", "name": "notes://all"}], refused


def test_completing_a_prompt_the_caller_is_shown_says_why_it_is_refused(
    gateway: tuple[Gateway, dict[str, str], Path],
) -> None:
    """A reader may list and get the prompt but not complete it: nothing is hidden, so the refusal says so."""
    running, keys, _ = gateway
    reader = Era(running, keys["reader"], HANDSHAKE)
    status, got = reader.ask("prompts/get", {"name": "notes_summarize_notes"})
    assert status == 200 and "result" in got, got
    params = {
        "ref": {"type": "ref/prompt", "name": "notes_summarize_notes"},
        "argument": {"name": "style", "value": "s"},
    }
    status, refused = reader.ask("completion/complete", params)
    message = refused["error"]["message"]
    assert message.startswith("not permitted: caller ") and "may not complete prompt 'notes_summarize_notes'" in message
