"""Redis as a gateway under load finds it, over real transports and a real redis-server.

- A client that stalls the gateway's event loop (4 MB bodies parsed back to back) must not make a healthy Redis
  look unreachable: redis-py's timeout, run on the loop's clock, expired with the answer unread in the socket, and
  the gateway went without Redis: the shared rate limit let calls pass on an empty bucket.
- The events budget counts what a stream costs Redis beyond its messages: every request answered as SSE has a
  stream of its own (~4.8 KB of MEMORY USAGE), and counting messages only let Redis hold ~9x the budget.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, raw_session, running_gateway, write_config
from vmcp_opt.shared.event_scripts import STREAM_OVERHEAD_BYTES

CONFORMANCE = str(EXAMPLES / "backends" / "conformance_server.py")
BURST = 3
STALLING_CALLS = 30
BUDGET = 100_000
PROGRESS_CALLS = 60
# What the event store keeps beside its streams for one session (its list of events, byte count and set of
# streams; the budget's hashes and counter), none of it charged: measured ~6 KB with MEMORY USAGE here.
UNCHARGED_SLACK = 16_384


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def gateway_config(directory: Path, redis_server: RedisServer, **extra: Any) -> Path:
    config: dict[str, Any] = {
        "backends": [{"name": "conf", "command": sys.executable, "args": [CONFORMANCE]}],
        "redis": {"url": redis_server.url},
        "sessions": {"store": "redis"},
        "optimizer": {"enabled": False},
        "server": {"startup_wait": 60},
    }
    for section, settings in extra.items():
        config[section] = {**config.get(section, {}), **settings}
    return write_config(directory, config)


def call(client: httpx2.Client, url: str, headers: dict[str, str], name: str, request: int, **params: Any) -> Any:
    """The call's HTTP status and its answer (a refusal's 429 carries the JSON-RPC error)."""
    body = {
        "jsonrpc": "2.0",
        "id": request,
        "method": "tools/call",
        "params": {"name": name, "arguments": {}, **params},
    }
    answer = client.post(url, json=body, headers=headers)
    if answer.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in answer.text.splitlines() if line.startswith("data:")]
        messages = [json.loads(one) for one in data if one]  # a priming event's is empty
        return answer.status_code, next(message for message in messages if message.get("id") == request)
    return answer.status_code, answer.json()


def stall_the_loop(url: str, headers: dict[str, str], stop: threading.Event) -> None:
    """Bodies of ~6 MB of numbers, back to back: parsing each holds the gateway's event loop past `redis.timeout`
    (~0.6 s here). A list, not a call: a call past the caller's bucket is refused before its body is parsed."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"junk": [[0.5, 1e-7, 12345]] * 300_000}}
    data = json.dumps(body).encode()
    with httpx2.Client(timeout=60) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx2.HTTPError):  # a body cut short: the next one stalls it all the same
                client.post(url, content=data, headers=headers)


def test_a_stalled_event_loop_does_not_switch_off_the_shared_rate_limit(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    limits = {"store": "redis", "per_caller": {"rate": 0.001, "burst": BURST}, "log_interval": 1}
    path = gateway_config(
        tmp_path,
        redis_server,
        rate_limits=limits,
        server={"max_body_bytes": 8 * 1024 * 1024},
        limits={"max_request_values": 2_000_000},  # bodies that stall the loop, as before the bound
    )
    with running_gateway(path) as gateway, httpx2.Client(timeout=60) as client:
        headers = raw_session(gateway.url)
        quiet = [call(client, gateway.url, headers, "conf_test_simple_text", n) for n in range(2, 3 + BURST)]
        assert [status for status, _ in quiet] == [200] * BURST + [429]  # the bucket is empty
        stop = threading.Event()
        stallers = [threading.Thread(target=stall_the_loop, args=(gateway.url, raw_session(gateway.url), stop))]
        stallers.append(threading.Thread(target=stall_the_loop, args=(gateway.url, raw_session(gateway.url), stop)))
        for staller in stallers:
            staller.start()
        try:
            stalled = [
                call(client, gateway.url, headers, "conf_test_simple_text", 100 + n) for n in range(STALLING_CALLS)
            ]
        finally:
            stop.set()
            for staller in stallers:
                staller.join()
        log = gateway.output()
    assert [answer for status, answer in stalled if status != 429] == []  # every call past the bucket refused
    assert all("rate limit reached" in answer["error"]["message"] for _, answer in stalled)
    assert "rate limits not checked" not in log
    assert "Timeout reading" not in log and "unreachable" not in log, log[-3000:]


def redis_cli(server: RedisServer, *args: str) -> str:
    done = subprocess.run(["redis-cli", "-p", str(server.port), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


# The budget's count and the streams Redis holds, read at once (the gateway writes events after sending them).
COUNTS = """
local streams = 0
for _, key in ipairs(redis.call('KEYS', 'vmcp:events:*')) do
  if redis.call('TYPE', key).ok == 'stream' then streams = streams + 1 end
end
return {redis.call('GET', 'vmcp:events-budget:total') or '0', streams}
"""


def event_keys_memory(server: RedisServer) -> int:
    """MEMORY USAGE of every key the event store holds (streams, the sessions' lists and counts, the budget's)."""
    keys = [key for key in redis_cli(server, "--scan", "--pattern", "vmcp:events*").splitlines() if key]
    return sum(int(redis_cli(server, "MEMORY", "USAGE", key) or 0) for key in keys)


def test_the_events_budget_bounds_the_memory_their_streams_take(tmp_path: Path, redis_server: RedisServer) -> None:
    """Progress calls, each its own small SSE stream: the streams Redis keeps are charged their own memory, so
    the event keys stay within the budget (plus what one session keeps uncharged beside them)."""
    budgets = {"max_event_bytes_in_redis": BUDGET, "max_event_bytes_per_caller_in_redis": BUDGET}
    path = gateway_config(tmp_path, redis_server, sessions=budgets)
    with running_gateway(path) as gateway, httpx2.Client(timeout=60) as client:
        headers = raw_session(gateway.url)
        for n in range(PROGRESS_CALLS):
            progress = {"_meta": {"progressToken": n}}
            status, answer = call(client, gateway.url, headers, "conf_test_tool_with_progress", 100 + n, **progress)
            assert status == 200 and "result" in answer, answer
        charged, streams = (int(value) for value in redis_cli(redis_server, "EVAL", COUNTS, "0").splitlines())
        held = event_keys_memory(redis_server)
    assert held <= BUDGET + UNCHARGED_SLACK, (held, streams)
    assert charged <= BUDGET
    assert charged >= streams * STREAM_OVERHEAD_BYTES  # every stream kept is charged its own cost
