"""A resumption with sessions in Redis reads its stream once.

The transport asks the store whether it holds the client's `Last-Event-ID` (so an id it cannot resume from is
refused with a 400 before an SSE response starts), then replays from it. Both read the same Redis stream, up to
`sessions.max_events_per_stream` entries: every resumption cost two such reads. The replay now sends what the
check read.

Real `vmcp serve` over the conformance backend, a real `redis-server` whose command counters are read before
and after one resumption, raw HTTP.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, raw_session, running_gateway, sse_messages, write_config

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
# The commands that read a stream's entries: what a replay costs Redis.
STREAM_READS = ("xrange", "xrevrange", "xread")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def stream_reads(url: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in STREAM_READS)


def await_stored(url: str, entries: int) -> None:
    """Waits until a stream in Redis holds `entries` entries. Events reach Redis through a writer task after
    the client has them: a resumption read before the answer is stored follows the stream (a second read),
    rightly. XLEN is not one of `STREAM_READS`, so waiting costs the count nothing."""
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(client.xlen(key) >= entries for key in client.scan_iter(_type="STREAM")):
            return
        time.sleep(0.05)
    raise AssertionError(f"no stream in Redis came to hold {entries} events")


def streamed_call(url: str, headers: dict[str, str]) -> list[tuple[str | None, Any]]:
    """A tool call that logs while it runs, so its answer is an SSE stream: its (event id, message) pairs."""
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "test_tool_with_logging"}}
    with httpx2.stream("POST", url, json=call, headers=headers, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_messages(response.iter_lines()))


def resumed(url: str, headers: dict[str, str], event_id: str) -> list[dict[str, Any]]:
    with httpx2.stream("GET", url, headers={**headers, "last-event-id": event_id}, timeout=30) as response:
        assert response.status_code == 200
        return [message for _, message in sse_messages(response.iter_lines()) if message is not None]


def test_a_resumption_from_a_held_event_reads_its_redis_stream_once(redis_server: RedisServer, tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "sessions": {"store": "redis"},
        "redis": {"url": redis_server.url, "timeout": 1.0},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        headers = raw_session(gateway.url)
        level = {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "debug"}}
        assert httpx2.post(gateway.url, json=level, headers=headers, timeout=30).status_code == 200
        events = streamed_call(gateway.url, headers)
        (priming_id, priming), (_, answer) = events[0], events[-1]
        assert priming is None and priming_id is not None and answer["id"] == 7
        await_stored(redis_server.url, len(events))

        before = stream_reads(redis_server.url)
        replayed = resumed(gateway.url, headers, priming_id)
        after = stream_reads(redis_server.url)

    # The replay is whole (the answer came, so the stream ended without following it) and read Redis once.
    assert [m.get("method") for m in replayed] == ["notifications/message"] * 3 + [None]
    assert replayed[-1] == answer
    assert after - before == 1
