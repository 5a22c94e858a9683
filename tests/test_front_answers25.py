"""What the HTTP front answers and logs for a client's mistakes (review 25, r4 D4/D5), over a real gateway.

- Malformed notifications (`notifications/cancelled`, `notifications/progress` whose params do not validate):
  the SDK warned once per POST; a client sending them in a loop wrote the log as fast as it could send.
- A DELETE of a session with a call running: the call was answered `500` with `"id": null`.
- A POST whose Content-Type is not JSON: a plain-text `400` with no content type, where every other refusal is
  a JSON-RPC error.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.support import (
    EXAMPLES,
    RAW_HEADERS,
    RAW_INITIALIZE,
    Gateway,
    demo_backend,
    raw_session,
    running_gateway,
    write_config,
)

HELD_SERVER = EXAMPLES / "backends" / "held_server.py"
MALFORMED = [
    {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": {"not": "an id"}}},
    {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": "not a number"}},
]
FLOOD = 200  # of each kind
DROPPED = "malformed params"  # the SDK's warning: "dropped %r: malformed params"
THROTTLE_INTERVAL = 60.0  # seconds: one line let through per interval (server/sessions.py `ThrottleRecords`)
DEADLINE = 30.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("front_answers")
    held = {"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]}
    with running_gateway(write_config(directory, {"backends": [demo_backend("notes"), held]})) as gateway:
        yield gateway


def dropped_lines(gateway: Gateway) -> int:
    return sum(DROPPED in line for line in gateway.output().splitlines())


def test_malformed_notifications_are_logged_a_line_a_minute_not_one_each(gateway: Gateway) -> None:
    session = raw_session(gateway.url)
    before = dropped_lines(gateway)
    started = time.monotonic()
    with httpx2.Client(timeout=30) as http:
        for notification in MALFORMED:
            for _ in range(FLOOD):
                assert http.post(gateway.url, json=notification, headers=session).status_code == 202
        # A request after them all: its answer comes once the session's loop has taken each of them.
        ping = http.post(gateway.url, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers=session)
        assert ping.status_code == 200 and ping.json()["result"] == {}, ping.text
    deadline = time.monotonic() + DEADLINE
    while dropped_lines(gateway) == before:  # the first one is let through: the throttle is per interval
        assert time.monotonic() < deadline, "no warning for the malformed notifications"
        time.sleep(0.05)
    written = dropped_lines(gateway) - before
    # One line per interval begun while the flood ran (with its count of those held back), not one per POST.
    allowed = 1 + int((time.monotonic() - started) // THROTTLE_INTERVAL)
    assert written <= allowed, f"{written} log lines for {FLOOD * len(MALFORMED)} malformed notifications"
    assert gateway.proc.poll() is None


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_delete_answers_a_running_call_404_under_its_id(
    gateway: Gateway, tmp_path: Path, anyio_backend: str
) -> None:
    session = raw_session(gateway.url)
    gate = tmp_path / "gate"
    arguments = {"message": "never answered", "gate": str(gate)}
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "held_held_echo", "arguments": arguments},
    }
    answers: list[httpx2.Response] = []
    try:
        async with httpx2.AsyncClient(timeout=60) as http, anyio.create_task_group() as calls:

            async def held_call() -> None:
                answers.append(await http.post(gateway.url, json=call, headers=session))

            calls.start_soon(held_call)
            await until_exists(Path(f"{gate}.started"))  # the backend holds the call until the gate exists
            deleted = await http.delete(gateway.url, headers=session)
            assert deleted.status_code == 200, deleted.text
    finally:
        gate.touch()  # the backend's call ends either way
    [answer] = answers
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["id"] == 7 and body["error"]["code"] == -32600, body
    assert "terminated" in body["error"]["message"]


async def until_exists(path: Path) -> None:
    with anyio.fail_after(DEADLINE):
        while not await anyio.Path(path).exists():  # noqa: ASYNC110 - another process makes the file
            await anyio.sleep(0.02)


PING = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"})
NOT_JSON = [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]


def refusal_of(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC error of a Content-Type refusal."""
    assert response.status_code == 415, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None, body
    assert body["error"]["code"] == -32600 and "application/json" in body["error"]["message"], body
    return body


def headers_with(headers: dict[str, str], content_type: str | None) -> dict[str, str]:
    plain = {name: value for name, value in headers.items() if name.lower() != "content-type"}
    return plain if content_type is None else {**plain, "Content-Type": content_type}


@pytest.mark.parametrize("content_type", NOT_JSON)
def test_a_post_that_is_not_json_gets_a_json_rpc_error_in_a_session(gateway: Gateway, content_type: str | None) -> None:
    session = raw_session(gateway.url)
    with httpx2.Client(timeout=30) as http:
        refusal_of(http.post(gateway.url, content=PING, headers=headers_with(session, content_type)))
        # Only the Content-Type was wrong: the same ping as JSON (with a charset) is answered.
        good = http.post(gateway.url, content=PING, headers=headers_with(session, "application/json; charset=utf-8"))
        assert good.status_code == 200 and good.json()["result"] == {}, good.text


@pytest.mark.parametrize("content_type", NOT_JSON)
def test_an_initialize_or_a_2026_request_that_is_not_json_gets_a_json_rpc_error(
    gateway: Gateway, content_type: str | None
) -> None:
    modern = {**RAW_HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "ping"}
    with httpx2.Client(timeout=30) as http:
        opening = http.post(
            gateway.url, content=json.dumps(RAW_INITIALIZE), headers=headers_with(RAW_HEADERS, content_type)
        )
        refusal_of(opening)
        assert "mcp-session-id" not in opening.headers  # no session opened for it
        refusal_of(http.post(gateway.url, content=PING, headers=headers_with(modern, content_type)))
