"""The HTTP front's sessions let go of what they no longer need.

- An idle session keeps neither its last request nor its last answer: the SDK's dispatcher and message router each
  kept their last message in a local variable until the session's next one (10 sessions each making one 3.9 MB call
  then idling: +170 MB RSS, freed by one small request on each).
- A stream resumed with `Last-Event-ID` while its call still runs ends with the call's answer (it pinged for ever,
  and kept the session past its idle timeout).
- In memory mode one caller's events cannot push another caller's out of the ring: a client at another address
  with big streamed answers made a cut client's resumption fail (400, its result lost).
- A session whose client left before its opening answer was written is ended, and its slot freed: it held one of
  its address's `limits.max_sessions_per_address` until its idle timeout.

A real gateway process over real stdio backends (examples/backends/), raw HTTP with httpx2.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psutil
import pytest
from mcp_types import JSONRPCNotification

from tests.support import (
    EXAMPLES,
    RAW_HEADERS,
    RAW_INITIALIZE,
    Gateway,
    demo_backend,
    patched_on_import,
    running_gateway,
    sitecustomize,
    sse_messages,
    write_config,
)
from vmcp_opt.config import SessionsConfig
from vmcp_opt.server.event_store import SessionEvents, memory_event_store

pytestmark = [pytest.mark.slow]

HELD_SERVER = EXAMPLES / "backends" / "held_server.py"
MB = 1_000_000
WITHIN = 60.0  # a guard against a hang, not a measure
# Past the lazy stream's silence (server/lazy_stream.py COMMIT_SSE_AFTER, 15 s) a call's answer is an SSE stream.
# The held calls here stay silent until their gate opens, whatever the wait: the held gateway's is cut to this, by
# a `sitecustomize` on its path (`SHORT_COMMIT`), so that each test does not sit out 15 s before its stream starts.
SSE_AFTER = 1.0
SHORT_COMMIT = patched_on_import(
    "vmcp_opt.server.lazy_stream",
    f"""
    def patch(module):
        module.COMMIT_SSE_AFTER = {SSE_AFTER!r}
    """,
)
POLL = 0.1


def open_session(client: httpx2.Client, url: str) -> dict[str, str]:
    opened = client.post(url, json=RAW_INITIALIZE, headers=RAW_HEADERS)
    assert opened.status_code == 200, opened.text
    headers = {**RAW_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    initialized = client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert initialized.status_code == 202
    return headers


def tool_call(request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def gateway_rss(gateway: Gateway) -> int:
    return int(psutil.Process(gateway.proc.pid).memory_info().rss)


@pytest.fixture
def demo_gateway(tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(write_config(tmp_path, {"backends": [demo_backend("demo")]})) as gateway:
        yield gateway


def test_idle_sessions_keep_neither_their_last_big_request_nor_its_answer(demo_gateway: Gateway) -> None:
    url = demo_gateway.url
    big = "A" * (4 * MB)
    with httpx2.Client(timeout=WITHIN) as client:

        def big_call(headers: dict[str, str]) -> None:
            answer = client.post(
                url, json=tool_call(2, "demo_slow_echo", {"message": big, "seconds": 0}), headers=headers
            )
            assert answer.status_code == 200 and len(answer.content) > len(big)

        # Warm-up: the allocator's pools grow to one big call's needs, then that session is used again (not idle).
        warm = open_session(client, url)
        big_call(warm)
        assert client.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "ping"}, headers=warm).status_code == 200
        before = gateway_rss(demo_gateway)
        for _ in range(10):
            big_call(open_session(client, url))  # then idle: no other message on the session
        grown = gateway_rss(demo_gateway) - before
    # Each session held its 4 MB request (body and parsed) and its answer, ~17 MB, until its next message: ~170 MB.
    assert grown < 20 * MB, f"10 idle sessions that each made one 4 MB call grew the gateway by {grown / MB:.0f} MB"


def sse_call(client: httpx2.Client, url: str, headers: dict[str, str], call: dict[str, Any]) -> str:
    """POSTs `call`, whose answer is an SSE stream once it has run `SSE_AFTER` s; the priming event's id, then the
    connection dropped (a client whose network cut the stream)."""
    with client.stream("POST", url, json=call, headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream"), response.read()
        for event_id, _ in sse_messages(response.iter_lines()):
            assert event_id is not None
            return event_id
    raise AssertionError("the stream ended before its priming event")


def gate_released(gate: Path) -> None:
    """Releases a held_echo call waiting on `gate` (examples/backends/held_server.py)."""
    gate.touch()


def resumed_to_end(url: str, headers: dict[str, str], event_id: str, gate: Path) -> list[dict[str, Any]]:
    """Resumes from `event_id` while the call is held, lets the call answer, and reads the stream to its end."""
    after_resume = {**headers, "last-event-id": event_id}
    timeout = httpx2.Timeout(WITHIN, read=WITHIN)
    deadline = time.monotonic() + WITHIN
    while True:
        with httpx2.stream("GET", url, headers=after_resume, timeout=timeout) as response:
            assert response.status_code == 200, response.read()
            lines = response.iter_lines()
            if next(sse_messages(lines), None) is None:
                # The cut stream was still registered (its end not yet seen): nothing to follow; resume again, as
                # the SDK's client does.
                assert time.monotonic() < deadline, "the resumed stream never went live"
                time.sleep(POLL)
                continue
            gate_released(gate)  # the resumed stream is live (its priming event came): the call may answer
            return answer_then_end(lines)


def answer_then_end(lines: Iterator[str]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for line in lines:
        # Before: after the answer came a keep-alive ping every 15 s, and the stream never ended.
        assert not (line.startswith(":") and messages), f"the resumed stream went on after its answer: {line!r}"
        if line.startswith("data:") and line[5:].strip():
            messages.append(json.loads(line[5:]))
    return messages


@pytest.fixture
def held_gateway(tmp_path: Path) -> Iterator[Gateway]:
    config = {
        "backends": [{"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]}],
        # Small, so a few 1 MB answers pass the ring's bound.
        "sessions": {"max_event_bytes_in_memory": 4 * 1024 * 1024},
    }
    env = sitecustomize(tmp_path / "hook", SHORT_COMMIT)
    with running_gateway(write_config(tmp_path, config), env=env) as gateway:
        yield gateway


def test_a_stream_resumed_while_its_call_runs_ends_with_the_answer(held_gateway: Gateway, tmp_path: Path) -> None:
    url, gate = held_gateway.url, tmp_path / "gate"
    with httpx2.Client(timeout=WITHIN) as client:
        headers = open_session(client, url)
        event_id = sse_call(
            client, url, headers, tool_call(1, "held_held_echo", {"message": "the result", "gate": str(gate)})
        )
    messages = resumed_to_end(url, headers, event_id, gate)
    assert [message.get("id") for message in messages] == [1]
    assert messages[0]["result"]["content"][0]["text"] == "the result"


def test_one_callers_big_answers_leave_another_callers_events(held_gateway: Gateway, tmp_path: Path) -> None:
    url, victim_gate, other_gate = held_gateway.url, tmp_path / "victim", tmp_path / "other"
    other = httpx2.Client(timeout=WITHIN, transport=httpx2.HTTPTransport(local_address="127.0.0.2"))
    with other, httpx2.Client(timeout=WITHIN) as victim:
        victim_headers = open_session(victim, url)
        others = [open_session(other, url) for _ in range(3)]
        big = tool_call(5, "held_held_echo", {"message": "B" * MB, "gate": str(other_gate)})
        answered: list[int] = []
        streaming = [threading.Event() for _ in others]

        def read_big(headers: dict[str, str], number: int) -> None:
            with other.stream("POST", url, json=big, headers=headers) as response:
                if response.headers["content-type"].startswith("text/event-stream"):
                    streaming[number].set()  # its answer will be an event in the ring
                answered.append(sum(len(chunk) for chunk in response.iter_bytes()))

        readers = [threading.Thread(target=read_big, args=(headers, n)) for n, headers in enumerate(others)]
        for reader in readers:
            reader.start()
        assert all(started.wait(WITHIN) for started in streaming), "the other caller's answers were not streamed"
        call = tool_call(1, "held_held_echo", {"message": "the victim's result", "gate": str(victim_gate)})
        event_id = sse_call(victim, url, victim_headers, call)  # stored before the other caller's answers
        gate_released(other_gate)
        for reader in readers:
            reader.join(WITHIN)
        assert len(answered) == 3 and min(answered) > 2 * MB  # ~2 MB events each (text and structured), over 4 MiB
    messages = resumed_to_end(url, victim_headers, event_id, victim_gate)
    assert [message["result"]["content"][0]["text"] for message in messages] == ["the victim's result"]


def abandoned_initialize(port: int) -> None:
    """An `initialize` sent whole, its connection closed at once: its answer can reach no one."""
    body = json.dumps(RAW_INITIALIZE).encode()
    head = (
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head.encode() + body)


def test_an_initialize_whose_client_left_frees_its_session_slot(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("demo")], "limits": {"max_sessions_per_address": 2}}
    with running_gateway(write_config(tmp_path, config)) as gateway, httpx2.Client(timeout=WITHIN) as client:
        for _ in range(3):
            abandoned_initialize(gateway.port)
        opened: list[dict[str, str]] = []
        deadline = time.monotonic() + WITHIN
        while len(opened) < 2:
            # Before: the abandoned sessions held both slots until their idle timeout (10 minutes): 429 until then.
            assert time.monotonic() < deadline, "the abandoned initializes still hold this address's session slots"
            answer = client.post(gateway.url, json=RAW_INITIALIZE, headers=RAW_HEADERS)
            if answer.status_code == 200:
                session = {"mcp-session-id": answer.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
                opened.append({**RAW_HEADERS, **session})
            else:
                assert answer.status_code == 429, answer.text
                time.sleep(POLL)
        # Sessions whose answer was read are kept, and hold their slots.
        assert client.post(gateway.url, json=RAW_INITIALIZE, headers=RAW_HEADERS).status_code == 429
        for headers in opened:
            ping = client.post(gateway.url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=headers)
            assert ping.status_code == 200, ping.text


def test_a_caller_past_its_byte_bound_drops_its_own_oldest_of_any_session() -> None:
    ring = memory_event_store(SessionsConfig(max_event_bytes_per_caller_in_memory=10_000))
    assert ring.caller_bytes == 10_000
    first, second, other = ring.session_view("alice"), ring.session_view("alice"), ring.session_view("bob")

    def stored(view: SessionEvents, *sizes: int) -> list[str]:
        async def store() -> list[str]:
            return [await view.store_event("GET", note(size)) for size in sizes]

        return anyio.run(store)

    bobs = stored(other, 3000, 3000)
    firsts = stored(first, 3000, 3000)
    seconds = stored(second, 3000, 3000)  # alice at 12 kB: her oldest (the first session's) goes
    held = [[anyio.run(view.holds, event) for event in events] for view, events in ((first, firsts), (second, seconds))]
    assert held == [[False, True], [True, True]]
    assert all(anyio.run(other.holds, event) for event in bobs)  # another caller's are not hers to drop
    stored(second, 50_000)  # her newest stays whatever its size; the rest of hers go
    assert not any(anyio.run(first.holds, event) for event in firsts)
    assert all(anyio.run(other.holds, event) for event in bobs)


def note(size: int) -> JSONRPCNotification:
    return JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"data": "x" * size})
