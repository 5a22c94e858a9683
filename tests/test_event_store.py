"""The in-memory SSE event store: bounded per session and in total, and emptied of a session that ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import redis as redis_lib
from mcp.server.streamable_http import EventMessage
from mcp_types import JSONRPCNotification, JSONRPCResponse

from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, raw_session, running_gateway, sse_messages, write_config
from vmcp_opt.config import SessionsConfig
from vmcp_opt.server.event_store import BoundedEventStore, SessionEvents, memory_event_store


def note(n: int, text: str = "") -> JSONRPCNotification:
    return JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"data": n, "text": text})


def store_all(view: SessionEvents, stream: str, messages: list[Any]) -> list[str]:
    async def run() -> list[str]:
        return [await view.store_event(stream, message) for message in messages]

    return anyio.run(run)


def replayed(view: SessionEvents, event_id: str) -> list[Any]:
    got: list[EventMessage] = []

    async def collect(event: EventMessage) -> None:
        got.append(event)

    anyio.run(view.replay_events_after, event_id, collect)
    return [event.message for event in got]


def test_a_session_past_its_bound_drops_its_own_oldest_and_not_another_sessions() -> None:
    ring = BoundedEventStore(max_events=100, session_events=10)
    busy, quiet = ring.session_view(), ring.session_view()
    kept = store_all(quiet, "1", [None, note(1), JSONRPCResponse(jsonrpc="2.0", id=1, result={})])
    flood = store_all(busy, "GET", [None, *(note(n) for n in range(50))])
    assert len(ring) == 13  # the busy session's newest 10, the quiet one's 3
    assert [message.params["data"] for message in replayed(busy, flood[-4])] == [47, 48, 49]
    assert replayed(busy, flood[0]) == []  # dropped
    assert [type(message).__name__ for message in replayed(quiet, kept[0])] == [
        "JSONRPCNotification",
        "JSONRPCResponse",
    ]


def test_a_session_past_its_byte_bound_keeps_its_newest_whatever_its_size() -> None:
    ring = BoundedEventStore(session_bytes=10_000)
    view = ring.session_view()
    store_all(view, "GET", [note(n, "x" * 3000) for n in range(10)])
    assert len(ring) == 3 and 9000 < ring.bytes <= 10_000
    store_all(view, "GET", [note(10, "y" * 50_000)])
    assert len(ring) == 1 and ring.bytes > 50_000


def test_all_sessions_together_stay_within_the_total() -> None:
    ring = BoundedEventStore(max_events=15, session_events=10)
    first, second = ring.session_view(), ring.session_view()
    early = store_all(first, "GET", [None, *(note(n) for n in range(9))])
    store_all(second, "GET", [note(n) for n in range(10)])
    assert len(ring) == 15
    assert replayed(first, early[0]) == []  # the oldest of all went first
    assert [message.params["data"] for message in replayed(first, early[5])] == [5, 6, 7, 8]


def test_a_session_that_ends_takes_its_events_with_it() -> None:
    ring = BoundedEventStore()
    ended, other = ring.session_view(), ring.session_view()
    kept = store_all(other, "2", [None, note(3)])
    bytes_of_other = ring.bytes
    store_all(ended, "1", [None, note(1, "x" * 500), note(2)])
    ended.forget()
    assert len(ring) == 2 and ring.bytes == bytes_of_other
    assert [message.params["data"] for message in replayed(other, kept[0])] == [3]
    ended.forget()  # twice is harmless
    assert len(ring) == 2


def test_the_settings_bound_the_store() -> None:
    settings = SessionsConfig(
        max_events_per_session=7,
        max_event_bytes_per_session=5000,
        max_events_in_memory=70,
        max_event_bytes_in_memory=9000,
    )
    ring = memory_event_store(settings)
    assert (ring.session_events, ring.session_bytes, ring.max_events, ring.max_bytes) == (7, 5000, 70, 9000)


CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_gateways_sessions_keep_their_newest_events_within_their_bound(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Four streamed calls of five events each (priming, three logs, the answer) in a session that keeps 12:
    the first call's stream can no longer be resumed, the last one's replays whole, in either store."""
    config: dict[str, Any] = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},  # the backend's own tool names
        "sessions": {"store": store, "max_events_per_session": 12},
    }
    if store == "redis":
        config["redis"] = {"url": request.getfixturevalue("redis").url, "timeout": 1.0}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        headers = raw_session(gateway.url)
        level = {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "debug"}}
        assert httpx2.post(gateway.url, json=level, headers=headers).status_code == 200
        primed = [streamed_call(gateway.url, headers, request_id) for request_id in range(10, 14)]
        assert resumed(gateway.url, headers, primed[0]) == []
        last = resumed(gateway.url, headers, primed[-1])
        assert [m.get("method") for m in last] == ["notifications/message"] * 3 + [None]
        assert last[-1]["id"] == 13
        if store == "redis":
            held = redis_lib.Redis.from_url(request.getfixturevalue("redis").url)
            (events,) = held.keys("*:held")
            assert held.llen(events) == 12
            assert httpx2.delete(gateway.url, headers=headers).status_code == 200
            # A deleted session's events go with it (just after its DELETE is answered).
            deadline = time.monotonic() + 30
            while held.keys("*:events:*") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert held.keys("*:events:*") == []
            held.close()


def streamed_call(url: str, headers: dict[str, str], request_id: int) -> str:
    """Calls a tool that logs while it runs (an SSE answer); the id of the stream's priming event."""
    params = {"name": "test_tool_with_logging", "arguments": {}}
    call = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    with httpx2.stream("POST", url, json=call, headers=headers, timeout=30) as response:
        events = list(sse_messages(response.iter_lines()))
    assert events[-1][1] is not None and events[-1][1]["id"] == request_id
    assert events[0][0] is not None and events[0][1] is None
    return events[0][0]


def resumed(url: str, headers: dict[str, str], event_id: str) -> list[dict[str, Any]]:
    """What a GET with `Last-Event-ID: event_id` replays (until its answer, or the stream's end)."""
    got: list[dict[str, Any]] = []
    with httpx2.stream("GET", url, headers={**headers, "last-event-id": event_id}, timeout=30) as response:
        for _, message in sse_messages(response.iter_lines()):
            if message is not None:
                got.append(message)
            if message is not None and "id" in message and "method" not in message:
                break
    return got
