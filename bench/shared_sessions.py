"""What `sessions.store: redis` costs per call: one replica in memory mode against redis mode, a session's
calls on the replica that opened it and alternating between two replicas (the other one restored it).

Real processes: redis-server, three `vmcp serve` (one memory, two redis), each with the conformance backend;
a plain HTTP client on the 2025-11-25 session path (the SSE answer parsed), calls interleaved path by path so
the machine's load hits each alike. Also Redis's own round trip (PING) for scale.

    PYTHONPATH=. .venv/bin/python bench/shared_sessions.py --calls 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import redis

from tests.redis_server import running_redis
from tests.support import EXAMPLES, running_gateway, write_config
from tests.test_http_limits import HEADERS, INITIALIZE

CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "c_test_simple_text", "arguments": {}}}


def open_session(client: httpx2.Client, url: str) -> dict[str, str]:
    opened = client.post(url, json=INITIALIZE, headers=HEADERS)
    headers = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return headers


def timed_call(client: httpx2.Client, url: str, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    answer = client.post(url, json=CALL, headers=headers)
    elapsed = time.perf_counter() - start
    assert answer.status_code == 200 and '"result"' in answer.text, answer.text
    return elapsed * 1000


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    backend = {"name": "c", "command": sys.executable, "args": [str(EXAMPLES / "backends" / "conformance_server.py")]}
    directory = Path(tempfile.mkdtemp())
    with running_redis() as server:
        memory = write_config(directory, {"backends": [backend]}, "memory.yaml")
        shared = write_config(
            directory,
            {"backends": [backend], "redis": {"url": server.url}, "sessions": {"store": "redis"}},
            "redis.yaml",
        )
        with (
            running_gateway(memory) as m,
            running_gateway(shared) as a,
            running_gateway(shared) as b,
            httpx2.Client(timeout=30) as client,
        ):
            sessions = {"memory": open_session(client, m.url), "redis": open_session(client, a.url)}
            moving = open_session(client, a.url)
            times: dict[str, list[float]] = {"memory": [], "redis, same replica": [], "redis, alternating": []}
            for i in range(args.calls + 20):  # the first 20 rounds warm up
                got = {
                    "memory": timed_call(client, m.url, sessions["memory"]),
                    "redis, same replica": timed_call(client, a.url, sessions["redis"]),
                    "redis, alternating": timed_call(client, (a, b)[i % 2].url, moving),
                }
                if i >= 20:
                    for path, ms in got.items():
                        times[path].append(ms)
        ping = redis.Redis.from_url(server.url)
        rtts = []
        for _ in range(args.calls):
            start = time.perf_counter()
            ping.ping()
            rtts.append((time.perf_counter() - start) * 1000)
    rows = {path: {"p50": statistics.median(v), "p95": percentile(v, 95)} for path, v in times.items()}
    base = rows["memory"]["p50"]
    print(f"| path ({args.calls} tools/call each) | p50 ms | p95 ms | p50 added vs memory |")
    print("|---|---|---|---|")
    for path, row in rows.items():
        print(f"| {path} | {row['p50']:.2f} | {row['p95']:.2f} | {row['p50'] - base:+.2f} |")
    print(f"| Redis PING round trip | {statistics.median(rtts):.3f} | {percentile(rtts, 95):.3f} | |")
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "shared_sessions.json").write_text(json.dumps({"rows": rows, "ping_p50": statistics.median(rtts)}))


if __name__ == "__main__":
    main()
