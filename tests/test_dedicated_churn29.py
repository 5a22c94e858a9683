"""One caller cannot make the gateway start backend processes at will.

- Dedicated backend sessions (a process each, for a stdio backend) are started at most
  `limits.dedicated_session_start_rate` a second per caller, after a burst (the at-once cap, at least 8): a client
  that opens an MCP session with the roots capability, calls and deletes it, in a loop, used to start a process
  per loop, each DELETE freeing the at-once slot. Past the burst its calls still succeed, on the shared session;
  a subscription past it is refused naming the limit.
- `resources/subscribe` to a backend whose handshake listed no subscriptions is refused without starting one.

Real `vmcp serve`, real stdio backends (tests/churn_backend29.py, which writes a line to a file per process
start and stop), raw HTTP clients from distinct loopback addresses (each its own caller).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import RAW_HEADERS, RAW_INITIALIZE, Gateway, running_gateway, write_config
from vmcp_opt.routing.dedicated import START_BURST_FLOOR

BACKEND = Path(__file__).with_name("churn_backend29.py")
PER_CALLER = 2  # limits.max_dedicated_sessions_per_caller here
BURST = START_BURST_FLOOR  # starts one caller may make at once: the at-once cap, here below the floor
ROUNDS = BURST + 3  # sessions one caller churns, more than the burst
CHURNER, SUBSCRIBER, ASKER = "127.0.0.41", "127.0.0.42", "127.0.0.43"  # one caller each


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    directory = tmp_path_factory.mktemp("churn")
    record = directory / "starts.txt"
    backends = [
        {"name": "plain", "command": sys.executable, "args": [str(BACKEND), str(record), "plain"]},
        {"name": "subs", "command": sys.executable, "args": [str(BACKEND), str(record), "subs", "--subscribe"]},
    ]
    config = {
        "backends": backends,
        "limits": {
            "max_dedicated_sessions": 8,
            "max_dedicated_sessions_per_caller": PER_CALLER,
            "dedicated_session_start_rate": 0.0001,  # no refill within the test
        },
    }
    with running_gateway(write_config(directory, config)) as gateway:
        yield gateway, record


def lines(record: Path, word: str, backend: str) -> int:
    text = record.read_text(encoding="utf-8") if record.exists() else ""
    return sum(1 for line in text.splitlines() if line.split()[:2] == [word, backend])


def all_stopped_but_shared(record: Path, backend: str) -> None:
    """Wait until every process of `backend` but its shared session's has ended: the at-once slot is free."""
    deadline = time.monotonic() + 60
    while lines(record, "start", backend) - lines(record, "stop", backend) > 1:
        assert time.monotonic() < deadline, record.read_text(encoding="utf-8")
        time.sleep(0.05)


def open_session(http: httpx2.Client, url: str, capabilities: dict[str, Any]) -> dict[str, str]:
    initialize = {**RAW_INITIALIZE, "params": {**RAW_INITIALIZE["params"], "capabilities": capabilities}}
    opened = http.post(url, json=initialize, headers=RAW_HEADERS)
    assert opened.status_code == 200, opened.text
    headers = {**RAW_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    initialized = http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert initialized.status_code == 202
    return headers


def request(http: httpx2.Client, url: str, headers: dict[str, str], method: str, params: dict[str, Any]) -> Any:
    """The result, or the error's message."""
    response = http.post(url, json={"jsonrpc": "2.0", "id": 7, "method": method, "params": params}, headers=headers)
    assert response.status_code == 200, response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[len("data:") :] for line in response.text.splitlines() if line.startswith("data:")]
        body = next(message for message in map(_json, data) if isinstance(message, dict) and "id" in message)
    else:
        body = response.json()
    return body["result"] if "result" in body else str(body["error"]["message"])


def _json(text: str) -> Any:
    return json.loads(text) if text.strip() else None


def client_at(address: str) -> httpx2.Client:
    return httpx2.Client(timeout=60, transport=httpx2.HTTPTransport(local_address=address))


def test_a_caller_churning_roots_sessions_starts_only_its_burst_of_processes_and_its_calls_still_succeed(
    started: tuple[Gateway, Path],
) -> None:
    gateway, record = started
    before = lines(record, "start", "plain")
    with client_at(CHURNER) as http:
        for round_ in range(ROUNDS):
            headers = open_session(http, gateway.url, {"roots": {"listChanged": True}})
            called = request(
                http, gateway.url, headers, "tools/call", {"name": "plain_echo", "arguments": {"text": f"r{round_}"}}
            )
            assert called == {"content": [{"type": "text", "text": f"r{round_}"}], "isError": False}
            assert http.delete(gateway.url, headers=headers).status_code in (200, 204)
            all_stopped_but_shared(record, "plain")
    # The burst, then the shared session: not one process per round.
    assert lines(record, "start", "plain") - before == BURST


def test_a_subscription_past_the_start_rate_is_refused_naming_it(started: tuple[Gateway, Path]) -> None:
    gateway, record = started
    with client_at(SUBSCRIBER) as http:
        outcomes = []
        for _ in range(BURST + 1):
            headers = open_session(http, gateway.url, {})
            outcomes.append(request(http, gateway.url, headers, "resources/subscribe", {"uri": "subs://note"}))
            assert http.delete(gateway.url, headers=headers).status_code in (200, 204)
            all_stopped_but_shared(record, "subs")
    assert outcomes[:BURST] == [{}] * BURST, outcomes
    assert "limits.dedicated_session_start_rate" in outcomes[-1], outcomes


def test_subscribing_to_a_backend_that_lists_no_subscriptions_starts_no_process(started: tuple[Gateway, Path]) -> None:
    gateway, record = started
    before = lines(record, "start", "plain")
    with client_at(ASKER) as http:
        headers = open_session(http, gateway.url, {})
        refused = request(http, gateway.url, headers, "resources/subscribe", {"uri": "plain://note"})
        assert "does not offer resource subscriptions" in refused, refused
        # The resource itself still reads, on the shared session.
        read = request(http, gateway.url, headers, "resources/read", {"uri": "plain://note"})
        assert read["contents"][0]["text"] == "a note", read
    assert lines(record, "start", "plain") == before
