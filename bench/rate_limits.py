"""What rate limits add to a call: the same tools/call through three gateways in front of one backend, with
no limits, with limits in memory and with limits in Redis, interleaved in one run (so machine noise hits
all alike). The limits' burst is far above the calls sent: every call is checked, none refused.

    .venv/bin/python bench/rate_limits.py [--calls 300]

Needs `redis-server` (scripts/setup.sh dev). Prints p50/p95 of each path and what each adds to no limits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import anyio
from mcp import Client
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eval.metrics import percentile  # noqa: E402
from tests.redis_server import running_redis  # noqa: E402
from tests.support import http_demo_backend, running_gateway, write_config  # noqa: E402

console = Console()
LIMITS = {"per_caller": {"rate": 1e6, "burst": 1_000_000}, "shared": {"rate": 1e6, "burst": 1_000_000}}


async def measure(urls: dict[str, str], calls: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {name: [] for name in urls}
    async with AsyncExitStack() as clients:
        sessions = {name: await clients.enter_async_context(Client(url, mode="legacy")) for name, url in urls.items()}
        for session in sessions.values():  # warm every path
            for _ in range(20):
                await session.call_tool("web_search_notes", {"query": "x"})
        for _ in range(calls):
            for name, session in sessions.items():
                started = time.perf_counter()
                await session.call_tool("web_search_notes", {"query": "x"})
                timings[name].append((time.perf_counter() - started) * 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        directory = Path(tmp)
        backend = stack.enter_context(http_demo_backend())
        redis = stack.enter_context(running_redis())
        base = {"backends": [{"name": "web", "transport": "streamable-http", "url": backend}]}
        configs = {
            "no limits": base,
            "memory": {**base, "rate_limits": {"store": "memory", **LIMITS}},
            "redis": {**base, "rate_limits": {"store": "redis", **LIMITS}, "redis": {"url": redis.url}},
        }
        urls = {}
        for name, config in configs.items():
            path = write_config(directory, config, name=f"{name.replace(' ', '-')}.yaml")
            urls[name] = stack.enter_context(running_gateway(path)).url
        timings = anyio.run(measure, urls, args.calls)
    table = Table(title=f"tools/call through the gateway, {args.calls} interleaved calls per path (ms)")
    for column in ("path", "p50", "p95", "added p50 vs no limits"):
        table.add_column(column, justify="right" if column != "path" else "left")
    baseline = statistics.median(timings["no limits"])
    for name, values in timings.items():
        p50 = statistics.median(values)
        table.add_row(name, f"{p50:.2f}", f"{percentile(values, 95):.2f}", f"{p50 - baseline:+.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
