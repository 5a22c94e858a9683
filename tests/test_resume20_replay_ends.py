"""A resumed request stream ends with the request's answer, in either session store.

A `GET` with `Last-Event-ID` replays what followed that event on its stream. Once the replay has sent the
request's answer (or the client resumes from the answer's own id) nothing more can come on that stream, and
the spec says the server SHOULD then close it. Before, the store handed the SDK the stream's id after the
replay, and the SDK held the response open, with keep-alive pings, for ever: a client that reads a stream to
its end (curl, an EventSource, a proxy's buffer) never saw it end.

Real `vmcp serve` over the conformance backend, real `redis-server` for the shared store, raw HTTP.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, raw_session, running_gateway, sse_messages, write_config

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
# Longer than any replay here takes, shorter than the SDK's 15 s keep-alive ping: a stream left open times out.
READ_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def streamed_call(url: str, headers: dict[str, str], request_id: int) -> list[tuple[str | None, Any]]:
    """A tool call that logs while it runs, so its answer is an SSE stream: its (event id, message) pairs."""
    call = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "test_tool_with_logging", "arguments": {}},
    }
    with httpx2.stream("POST", url, json=call, headers=headers, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_messages(response.iter_lines()))


def read_to_end(url: str, headers: dict[str, str], event_id: str) -> list[dict[str, Any]]:
    """Every message a resumption from `event_id` sends, reading until the server ends the stream."""
    timeout = httpx2.Timeout(30, read=READ_TIMEOUT)
    with httpx2.stream("GET", url, headers={**headers, "last-event-id": event_id}, timeout=timeout) as response:
        assert response.status_code == 200
        try:
            return [message for _, message in sse_messages(response.iter_lines()) if message is not None]
        except httpx2.ReadTimeout:
            pytest.fail(f"the resumed stream stayed open {READ_TIMEOUT} s after its last event")


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_resumed_stream_ends_once_its_answer_is_replayed(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config: dict[str, Any] = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "sessions": {"store": store},
    }
    if store == "redis":
        config["redis"] = {"url": request.getfixturevalue("redis").url, "timeout": 1.0}
    with running_gateway(write_config(tmp_path, config)) as gateway:
        headers = raw_session(gateway.url)
        level = {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "debug"}}
        assert httpx2.post(gateway.url, json=level, headers=headers, timeout=30).status_code == 200
        events = streamed_call(gateway.url, headers, 7)
        (priming_id, priming), (answer_id, answer) = events[0], events[-1]
        assert priming is None and priming_id is not None and answer_id is not None
        assert answer["id"] == 7

        replayed = read_to_end(gateway.url, headers, priming_id)
        assert [m.get("method") for m in replayed] == ["notifications/message"] * 3 + [None]
        assert replayed[-1] == answer

        # Resumed from the answer itself: nothing follows it, and the stream says so at once.
        assert read_to_end(gateway.url, headers, answer_id) == []
