"""Questions a client gave up on: they must not lock the caller out, and their cancellation must reach the client.

A real gateway fronts examples/backends/chatty_asker.py over stdio, whose `ask_client` asks its client for a
sampling answer in the middle of a call. A 2026-07-28 client cannot say it gave up on a round, so a new call at
`limits.max_pending_calls_per_caller` ends the caller's oldest waiting call instead of being refused. A 2025-11-25
client cancelling a call over HTTP is told the question relayed on the call's stream is cancelled too.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError

from tests.support import EXAMPLES, RAW_HEADERS, Gateway, running_gateway, sse_messages, wait_until, write_config

ASKER = EXAMPLES / "backends" / "chatty_asker.py"
PER_CALLER = 2
ASK = {"kind": "sampling", "count": 1}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "backends": [{"name": "asker", "command": sys.executable, "args": [str(ASKER)]}],
        "server": {"round_trip_spares": False},
        "limits": {"max_pending_calls_per_caller": PER_CALLER},
        "health": {"interval": 600},
    }
    with running_gateway(write_config(tmp_path_factory.mktemp("asks"), config)) as running:
        yield running


def asker_processes(gateway: Gateway) -> int:
    count = 0
    for process in gateway.children():
        try:
            count += any(str(ASKER) in part for part in process.cmdline())
        except psutil.NoSuchProcess:
            continue
    return count


async def never_answers(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    raise AssertionError("a 2026-07-28 round is answered by a retry, not a callback")


def test_a_call_past_the_callers_pending_bound_ends_its_oldest_abandoned_round(gateway: Gateway) -> None:
    """The user dismissed each question (no retry ever comes): the next call still gets its question, the oldest
    round's retry hears that it expired, and the caller's backend processes stay at its bound."""

    async def main() -> tuple[list[Any], str]:
        async with Client(gateway.url, mode="2026-07-28", sampling_callback=never_answers) as client:
            rounds = []
            for _ in range(PER_CALLER + 1):
                rounds.append(await client.session.call_tool("asker_ask_client", ASK, allow_input_required=True))
            first = rounds[0]
            assert isinstance(first, types.InputRequiredResult) and first.input_requests
            answer = types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text="late"), model="m"
            )
            try:
                await client.session.call_tool(
                    "asker_ask_client",
                    ASK,
                    input_responses={key: answer for key in first.input_requests},
                    request_state=first.request_state,
                    allow_input_required=True,
                )
                expired = "accepted"
            except MCPError as exc:
                expired = exc.error.message
            return rounds, expired

    rounds, expired = anyio.run(main)
    assert all(isinstance(r, types.InputRequiredResult) for r in rounds), rounds
    assert "expired" in expired and "call again without requestState" in expired, expired
    assert "limits.max_pending_calls_per_caller" in expired, expired
    # The shared session's process and one per waiting round: the ended round's process is gone.
    wait_until(lambda: asker_processes(gateway) <= 1 + PER_CALLER, 15, lambda: f"{asker_processes(gateway)}")


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {"sampling": {}},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}


def test_cancelling_a_call_over_http_cancels_the_question_it_relayed(gateway: Gateway) -> None:
    """The question went on the call's stream; the call's cancellation must withdraw it there, before the
    call's -32800 answer closes that stream (the backend's own cancel of its question comes later)."""
    opened = httpx2.post(gateway.url, json=INITIALIZE, headers=RAW_HEADERS, timeout=30)
    assert opened.status_code == 200, opened.text
    headers = {
        **RAW_HEADERS,
        "mcp-session-id": opened.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    httpx2.post(gateway.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    messages: list[dict[str, Any]] = []
    asked = threading.Event()

    def call() -> None:
        params = {"name": "asker_ask_client", "arguments": ASK}
        request = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
        with httpx2.stream("POST", gateway.url, json=request, headers=headers, timeout=30) as answer:
            for _, message in sse_messages(answer.iter_lines()):
                if message is not None:
                    messages.append(message)
                if message is not None and message.get("method") == "sampling/createMessage":
                    asked.set()

    caller = threading.Thread(target=call)
    caller.start()
    try:
        assert asked.wait(20), messages
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
        assert httpx2.post(gateway.url, json=cancel, headers=headers).status_code == 202
    finally:
        caller.join(30)
        httpx2.delete(gateway.url, headers=headers)
    question = next(m for m in messages if m.get("method") == "sampling/createMessage")
    cancelled = [m["params"]["requestId"] for m in messages if m.get("method") == "notifications/cancelled"]
    assert cancelled == [question["id"]], messages
    assert messages[-1].get("id") == 7 and "error" in messages[-1], messages
