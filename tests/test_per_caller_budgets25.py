"""What one caller can take from the others is its own share, however many MCP sessions or requests it makes.

- Dedicated backend sessions (a process each, for a stdio backend) and resource subscriptions are counted per
  caller (`caller_key`: the verified subject, else the client's address), not per MCP session, which a client
  opens at will: one address's sessions cannot take every slot, and another address still gets one.
- Approval tickets (2026-07-28) are kept per caller: one caller's flood of unanswered approvals displaces its
  own oldest tickets, never another caller's; a displaced ticket is told apart from a used one.

Real `vmcp serve`, real backends (the conformance server over stdio, the demo notes server), raw HTTP clients
from distinct loopback addresses or with distinct API keys.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest

from tests.support import (
    EXAMPLES,
    RAW_HEADERS,
    RAW_INITIALIZE,
    Gateway,
    demo_backend,
    policed_config,
    running_gateway,
    sse_messages,
    write_config,
)
from vmcp_opt.routing.approval import TICKETS_KEPT

pytestmark = [pytest.mark.slow]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
TOTAL = 4  # limits.max_dedicated_sessions here
PER_CALLER = 2  # limits.max_dedicated_sessions_per_caller here
SUBSCRIPTIONS = 2  # limits.max_subscriptions_per_caller here
GREEDY, OTHER = "127.0.0.20", "127.0.0.21"  # two client addresses


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "limits": {
            "max_dedicated_sessions": TOTAL,
            "max_dedicated_sessions_per_caller": PER_CALLER,
            "max_subscriptions_per_caller": SUBSCRIPTIONS,
        },
    }
    with running_gateway(write_config(tmp_path_factory.mktemp("budgets"), config)) as running:
        yield running


def client_at(address: str) -> httpx2.Client:
    return httpx2.Client(timeout=60, transport=httpx2.HTTPTransport(local_address=address))


def open_session(http: httpx2.Client, url: str) -> dict[str, str]:
    opened = http.post(url, json=RAW_INITIALIZE, headers=RAW_HEADERS)
    assert opened.status_code == 200, opened.text
    headers = {**RAW_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    initialized = http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert initialized.status_code == 202
    return headers


def answer(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer, whether sent as plain JSON or as the last message of an SSE stream (a 2026-07-28
    request's error comes with status 400)."""
    assert response.status_code in (200, 400), response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [message for _, message in sse_messages(iter(response.text.splitlines())) if message]
        return next(message for message in messages if "id" in message)
    body: dict[str, Any] = response.json()
    return body


def request(http: httpx2.Client, url: str, headers: dict[str, str], method: str, params: dict[str, Any]) -> str:
    """ "ok", or the error's message."""
    body = answer(http.post(url, json={"jsonrpc": "2.0", "id": 7, "method": method, "params": params}, headers=headers))
    return "ok" if "result" in body else str(body["error"]["message"])


def set_level(http: httpx2.Client, url: str, headers: dict[str, str]) -> str:
    return request(http, url, headers, "logging/setLevel", {"level": "debug"})


def subscribe(http: httpx2.Client, url: str, headers: dict[str, str], uri: str) -> str:
    return request(http, url, headers, "resources/subscribe", {"uri": uri})


def test_one_address_takes_only_its_share_of_dedicated_sessions_and_another_still_gets_one(gateway: Gateway) -> None:
    with client_at(GREEDY) as greedy, client_at(OTHER) as other:
        sessions = [open_session(greedy, gateway.url) for _ in range(TOTAL)]
        # Each session asks for log messages: a dedicated backend session each, until the address's share is held.
        outcomes = [set_level(greedy, gateway.url, headers) for headers in sessions]
        assert outcomes[:PER_CALLER] == ["ok"] * PER_CALLER
        for refused in outcomes[PER_CALLER:]:
            assert "limits.max_dedicated_sessions_per_caller" in refused, outcomes

        # Subscriptions count for the address too: two of its sessions hold the caller's whole allowance.
        first, second = sessions[:PER_CALLER]
        assert subscribe(greedy, gateway.url, first, "test://watched-resource") == "ok"
        assert subscribe(greedy, gateway.url, second, "test://static-text") == "ok"
        refused = subscribe(greedy, gateway.url, second, "test://static-binary")
        assert "limits.max_subscriptions_per_caller" in refused

        # Another address is not refused for what the first one holds.
        mine = open_session(other, gateway.url)
        assert set_level(other, gateway.url, mine) == "ok"
        assert subscribe(other, gateway.url, mine, "test://static-binary") == "ok"


# --- approval tickets (2026-07-28) ----------------------------------------------------------------------

POLICY = """\
permit(principal in Group::"dev", action in [Action::"list_tools", Action::"call_tool"], resource);
@approval("Saving writes to the team's shared notes.")
permit(principal, action == Action::"call_tool", resource == Tool::"notes_save_note");
"""
MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
}
APPROVE = {"vmcp_approval": {"action": "accept", "content": {"approve": True}}}


@pytest.fixture(scope="module")
def approvals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    directory = tmp_path_factory.mktemp("tickets")
    config, keys = policed_config(
        directory, {"alice": ["dev"], "mallory": ["dev"]}, POLICY, {"backends": [demo_backend("notes")]}
    )
    with running_gateway(config) as running:
        yield running, keys


def save_note(http: httpx2.Client, url: str, key: str, title: str, extra: dict[str, Any] | None = None) -> Any:
    params = {"_meta": META, "name": "notes_save_note", "arguments": {"title": title, "text": "x"}, **(extra or {})}
    headers = {
        **RAW_HEADERS,
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "notes_save_note",
        "Authorization": f"Bearer {key}",
    }
    body = answer(
        http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}, headers=headers)
    )
    return body.get("result", body.get("error"))


def asked(result: Any) -> str:
    """The request state of an approval question."""
    assert result.get("resultType") == "input_required", result
    return str(result["requestState"])


def approved(state: str) -> dict[str, Any]:
    return {"inputResponses": APPROVE, "requestState": state}


def test_a_flood_of_unanswered_approvals_displaces_only_its_own_callers_tickets(
    approvals: tuple[Gateway, dict[str, str]],
) -> None:
    gateway, keys = approvals
    with httpx2.Client(timeout=60) as http:
        alice = asked(save_note(http, gateway.url, keys["alice"], "alice-note"))
        mallory_first = asked(save_note(http, gateway.url, keys["mallory"], "mallory-note"))

    def flood(worker: int) -> None:  # more unanswered approvals than the gateway keeps in all
        with httpx2.Client(timeout=60) as http:
            for number in range(worker, TICKETS_KEPT + 1, 16):
                asked(save_note(http, gateway.url, keys["mallory"], f"flood-{number}"))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(flood, range(16)))

    with httpx2.Client(timeout=60) as http:
        done = save_note(http, gateway.url, keys["alice"], "alice-note", approved(alice))
        assert not done.get("isError"), done
        assert "saved note 'alice-note'" in json.dumps(done)
        # Mallory's own oldest ticket went, and she is told so, not that it was used.
        gone = save_note(http, gateway.url, keys["mallory"], "mallory-note", approved(mallory_first))
        assert gone["message"] == "this approval expired or was displaced by newer ones: call again"
        # A used ticket is still told apart.
        again = save_note(http, gateway.url, keys["alice"], "alice-note", approved(alice))
        assert "already used" in again["message"]


def test_past_the_total_the_caller_holding_most_tickets_loses_its_oldest() -> None:
    from mcp.shared.exceptions import MCPError

    from vmcp_opt.routing.approval import Tickets

    tickets = Tickets(total=4, per_caller=3)
    tickets.keep("a1", "t", "alice")
    for number in range(3):
        tickets.keep(f"m{number}", "t", "mallory")
    tickets.keep("b1", "t", "bob")  # full: mallory holds most, her oldest goes
    assert len(tickets) == 4
    tickets.use("a1", "t")
    tickets.use("b1", "t")
    tickets.use("m1", "t")  # her newer ones are kept
    with pytest.raises(MCPError, match="displaced by newer ones"):
        tickets.use("m0", "t")
    with pytest.raises(MCPError, match="already used"):
        tickets.use("a1", "t")
