"""What the gateway adds to a call: the same tools/call sent directly to a streamable-HTTP backend and
through `vmcp serve` in front of it, interleaved in one run (so machine noise hits both alike).

    .venv/bin/python bench/proxy_overhead.py [--calls 300] [--mode legacy|auto]

Prints p50/p95 of each path, the added latency and the ratio; writes bench/results/proxy_overhead.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import anyio
from mcp import Client
from rich.console import Console
from rich.progress import track
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.plots import latency_histogram  # noqa: E402
from eval.metrics import percentile  # noqa: E402
from tests.support import http_demo_backend, running_gateway, write_config  # noqa: E402

RESULTS = ROOT / "bench" / "results"
console = Console()


async def measure(direct_url: str, gateway_url: str, calls: int, mode: str) -> tuple[list[float], list[float]]:
    direct: list[float] = []
    proxied: list[float] = []
    async with Client(direct_url, mode=mode) as backend, Client(gateway_url, mode=mode) as gateway:
        paths = ((backend, "slow_echo", direct), (gateway, "web_slow_echo", proxied))
        for client, tool, _ in paths:  # warm both paths (connections, validators, caches)
            for _ in range(20):
                await client.call_tool(tool, {"message": "warm", "seconds": 0})
        for i in track(range(calls), description=f"{calls} interleaved calls per path", console=console):
            for client, tool, sink in paths if i % 2 == 0 else reversed(paths):
                started = time.perf_counter()
                result = await client.call_tool(tool, {"message": "ping", "seconds": 0})
                sink.append((time.perf_counter() - started) * 1000)
                assert not result.is_error
    return direct, proxied


def report(direct: list[float], proxied: list[float], mode: str) -> None:
    table = Table(title=f"tools/call latency, ms ({mode} handshake, {len(direct)} calls each)")
    for column in ("path", "p50", "p95", "mean"):
        table.add_column(column, justify="right")
    for name, samples in (("direct", direct), ("through vmcp", proxied)):
        table.add_row(
            name,
            f"{percentile(samples, 50):.2f}",
            f"{percentile(samples, 95):.2f}",
            f"{statistics.mean(samples):.2f}",
        )
    console.print(table)
    added = percentile(proxied, 50) - percentile(direct, 50)
    console.print(
        f"added by the gateway: p50 {added:+.2f} ms, ratio {percentile(proxied, 50) / percentile(direct, 50):.2f}x"
    )


def plot(direct: list[float], proxied: list[float], mode: str) -> Path:
    return latency_histogram(
        {"direct": direct, "through vmcp": proxied},
        RESULTS / f"proxy_overhead_{mode}.png",
        xlabel="tools/call latency (ms)",
        ylabel="calls",
        title=f"Gateway overhead ({mode} handshake)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--mode", choices=["legacy", "auto"], default="legacy", help="legacy = 2025-11-25 handshake")
    args = parser.parse_args()
    with http_demo_backend() as backend_url:
        directory = RESULTS / "proxy_overhead"
        directory.mkdir(parents=True, exist_ok=True)
        config = write_config(
            directory, {"backends": [{"name": "web", "transport": "streamable-http", "url": backend_url}]}
        )
        with running_gateway(config, "--no-optimizer") as gateway:
            direct, proxied = anyio.run(measure, backend_url, gateway.url, args.calls, args.mode)
    report(direct, proxied, args.mode)
    console.print(f"plot: {plot(direct, proxied, args.mode)}")


if __name__ == "__main__":
    main()
