"""Load with a failure in the middle: N concurrent MCP clients through the gateway for a bounded time,
over a demo backend on stdio and one on streamable HTTP; halfway through the stdio backend is
SIGKILLed and the gateway restarts it.

Prints throughput, p50/p95/p99 latency, errors by kind, calls lost (a call that got neither a result
nor an error: must be 0) and the gateway's RSS at start and end; writes bench/results/load.json.

    .venv/bin/python bench/load.py [--clients 32] [--seconds 20]
    .venv/bin/python bench/load.py --peer [--clients 32] [--seconds 20]

`--peer`: no failure; throughput of the gateway against mcp-proxy with `hey` (bench/throughput.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psutil
from mcp import Client
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from eval.metrics import percentile  # noqa: E402
from tests.support import demo_backend, http_demo_backend, running_gateway, write_config  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CALL_TIMEOUT = 10.0


def classify(text: str) -> str:
    lowered = text.lower()
    for kind in ("circuit open", "connection closed", "connection lost", "did not answer", "unknown tool"):
        if kind in lowered:
            return kind.replace(" ", "_")
    if "backend '" in lowered and (" is failed" in lowered or " is connecting" in lowered):
        return "backend_down"
    return "other: " + text[:60]


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.started = 0
        self.answered = 0

    def lost(self) -> int:
        return self.started - self.answered


async def client_loop(url: str, stop_at: float, stats: Stats, index: int) -> None:
    tools = ["local_slow_echo", "web_slow_echo"]
    async with Client(url) as client:
        n = index
        while time.monotonic() < stop_at:
            tool = tools[n % 2]
            n += 1
            stats.started += 1
            began = time.monotonic()
            try:
                with anyio.fail_after(CALL_TIMEOUT + 5):
                    result = await client.call_tool(tool, {"message": "x", "seconds": 0})
            except MCPError as exc:
                stats.errors[classify(exc.error.message)] += 1
            except TimeoutError:
                continue  # neither a result nor an error in time: lost (started, never answered)
            except Exception as exc:
                stats.errors[f"client_exception: {type(exc).__name__}"] += 1
            else:
                if result.is_error:
                    text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
                    stats.errors[classify(text)] += 1
                else:
                    stats.latencies.append(time.monotonic() - began)
            stats.answered += 1


def stdio_backend_pid(gateway_pid: int) -> int:
    for child in psutil.Process(gateway_pid).children(recursive=True):
        cmdline = " ".join(child.cmdline())
        if "demo_server.py" in cmdline and "--http" not in cmdline:
            return child.pid
    raise RuntimeError("the stdio demo backend is not running under the gateway")


async def run(url: str, gateway_pid: int, clients: int, seconds: float) -> dict[str, Any]:
    stats = Stats()
    gateway = psutil.Process(gateway_pid)
    async with Client(url) as warm:  # every backend answered once before the clock starts
        for tool in ("local_slow_echo", "web_slow_echo"):
            await warm.call_tool(tool, {"message": "warm", "seconds": 0})
    rss_start = gateway.memory_info().rss
    started = time.monotonic()
    stop_at = started + seconds
    killed: dict[str, Any] = {}

    async def kill_midway() -> None:
        await anyio.sleep(seconds / 2)
        pid = stdio_backend_pid(gateway_pid)
        os.kill(pid, signal.SIGKILL)
        killed.update(pid=pid, at=time.monotonic() - started)
        while time.monotonic() < stop_at:
            await anyio.sleep(0.1)
            try:
                new_pid = stdio_backend_pid(gateway_pid)
            except RuntimeError:
                continue
            if new_pid != pid:
                killed.update(restarted_pid=new_pid, restarted_after=time.monotonic() - started - killed["at"])
                return

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(kill_midway)
        for index in range(clients):
            task_group.start_soon(client_loop, url, stop_at, stats, index)
    elapsed = time.monotonic() - started
    rss_end = gateway.memory_info().rss
    ok = len(stats.latencies)
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "calls": stats.answered,
        "ok": ok,
        "throughput_per_s": round(stats.answered / elapsed, 1),
        "ok_throughput_per_s": round(ok / elapsed, 1),
        "latency_ms": {
            "p50": round(percentile(stats.latencies, 50) * 1000, 2),
            "p95": round(percentile(stats.latencies, 95) * 1000, 2),
            "p99": round(percentile(stats.latencies, 99) * 1000, 2),
        },
        "errors_by_kind": dict(stats.errors.most_common()),
        "calls_lost": stats.lost(),
        "kill": killed,
        "gateway_rss_mb": {"start": round(rss_start / 2**20, 1), "end": round(rss_end / 2**20, 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--peer", action="store_true", help="throughput against mcp-proxy, driven by hey")
    args = parser.parse_args()
    if args.peer:
        from bench.throughput import compare

        with tempfile.TemporaryDirectory() as tmp:
            compare(args.clients, args.seconds, Path(tmp))
        return
    with tempfile.TemporaryDirectory() as tmp, http_demo_backend() as web_url:
        config = {
            "backends": [demo_backend("local"), {"name": "web", "transport": "streamable-http", "url": web_url}],
            "health": {"interval": 1.0, "timeout": 2.0},
            "failure": {"restart": {"initial_delay": 0.5}},
            "timeouts": {"call": CALL_TIMEOUT},
            "server": {"log_level": "warning"},
        }
        with running_gateway(write_config(Path(tmp), config)) as gateway:
            report = anyio.run(run, gateway.url, gateway.proc.pid, args.clients, args.seconds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    if report["calls_lost"]:
        sys.exit(f"{report['calls_lost']} calls lost")


if __name__ == "__main__":
    main()
