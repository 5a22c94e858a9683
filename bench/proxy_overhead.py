"""What the gateway adds to a call: the same tools/call sent directly to the demo backend over streamable
HTTP and through a gateway in front of it, interleaved in one run (so machine noise hits every path alike).

    .venv/bin/python bench/proxy_overhead.py [--calls 300] [--mode legacy|auto]
    .venv/bin/python bench/proxy_overhead.py --peer [--calls 300] [--before REV]

Without `--peer`: direct vs `vmcp serve` (backend over HTTP), one handshake mode; prints p50/p95 of each
path, the added latency and the ratio; writes bench/results/proxy_overhead_<mode>.png.

`--peer`: direct vs mcp-proxy vs `vmcp serve`, both gateways in front of the same demo backend over stdio,
the three paths interleaved, once on the 2025-11-25 handshake for every leg and once on the client's default
era (2026-07-28 where the server offers it; mcp-proxy offers only 2025-11-25). mcp-proxy is installed on
first use into its own virtual environment (bench/peer.py; `--peer-venv` to put it elsewhere). `--before REV`
adds a fourth path, the gateway as it was at a git revision (bench/abuse.py's `gateway_at`): a change's
effect measured interleaved, in the same run as the peer.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client
from rich.console import Console
from rich.progress import track
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.abuse import gateway_at  # noqa: E402
from bench.peer import PEER_VENV, running_peer  # noqa: E402
from bench.plots import latency_histogram  # noqa: E402
from eval.metrics import percentile  # noqa: E402
from tests.support import (  # noqa: E402
    demo_backend,
    http_demo_backend,
    running_gateway,
    write_config,
)

RESULTS = ROOT / "bench" / "results"
MODES = {"legacy": "2025-11-25 on both legs", "auto": "client's default era"}
console = Console()

# (label, MCP endpoint URL, the demo backend's echo tool as that endpoint names it)
Endpoint = tuple[str, str, str]


async def measure(paths: list[Endpoint], calls: int, mode: str) -> dict[str, list[float]]:
    """`calls` calls per path, the paths' order rotated every round; milliseconds per call."""
    samples: dict[str, list[float]] = {label: [] for label, _, _ in paths}
    async with contextlib.AsyncExitStack() as stack:
        clients = [(label, await stack.enter_async_context(Client(url, mode=mode)), tool) for label, url, tool in paths]
        for _, client, tool in clients:  # warm every path (connections, validators, caches)
            for _ in range(20):
                await client.call_tool(tool, {"message": "warm", "seconds": 0})
        for i in track(range(calls), description=f"{mode}: {calls} interleaved calls per path", console=console):
            turn = i % len(clients)
            for label, client, tool in clients[turn:] + clients[:turn]:
                started = time.perf_counter()
                result = await client.call_tool(tool, {"message": "ping", "seconds": 0})
                samples[label].append((time.perf_counter() - started) * 1000)
                assert not result.is_error
    return samples


def report(samples: dict[str, list[float]], mode: str) -> None:
    direct = percentile(samples["direct"], 50)
    table = Table(title=f"tools/call latency, ms ({MODES[mode]}, {len(samples['direct'])} calls each)")
    for column in ("path", "p50", "p95", "mean", "added p50", "ratio"):
        table.add_column(column, justify="right")
    for name, values in samples.items():
        p50 = percentile(values, 50)
        table.add_row(
            name,
            f"{p50:.2f}",
            f"{percentile(values, 95):.2f}",
            f"{statistics.mean(values):.2f}",
            "" if name == "direct" else f"{p50 - direct:+.2f}",
            "" if name == "direct" else f"{p50 / direct:.2f}x",
        )
    console.print(table)


def summary(by_mode: dict[str, dict[str, list[float]]]) -> None:
    """The issue's table: added p50 per gateway, one column per handshake mode."""
    table = Table(title="added p50 per call, ms (vs direct, same run)")
    table.add_column("path")
    for mode in by_mode:
        table.add_column(MODES[mode], justify="right")
    gateways = [label for label in next(iter(by_mode.values())) if label != "direct"]
    for label in gateways:
        cells = []
        for samples in by_mode.values():
            cells.append(f"{percentile(samples[label], 50) - percentile(samples['direct'], 50):+.2f}")
        table.add_row(label, *cells)
    console.print(table)


def plot(samples: dict[str, list[float]], mode: str, name: str) -> Path:
    return latency_histogram(
        samples,
        RESULTS / f"{name}_{mode}.png",
        xlabel="tools/call latency (ms)",
        ylabel="calls",
        title=f"Gateway overhead ({MODES[mode]})",
    )


def run_peer(calls: int, venv: Path, before: str | None) -> None:
    directory = RESULTS / "proxy_overhead"
    directory.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {"backends": [demo_backend("web")], "optimizer": {"enabled": False}}
    with contextlib.ExitStack() as stack:
        direct_url = stack.enter_context(http_demo_backend())
        peer_url = stack.enter_context(running_peer(venv, console))
        gateway = stack.enter_context(running_gateway(write_config(directory, settings)))
        paths = [("direct", direct_url, "slow_echo"), ("mcp-proxy", peer_url, "slow_echo")]
        paths.append(("vmcp-opt", gateway.url, "web_slow_echo"))
        if before is not None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            earlier = stack.enter_context(gateway_at(before, scratch / "before", settings))
            paths.append((f"vmcp-opt at {before}", earlier.url, "web_slow_echo"))
        by_mode = {mode: anyio.run(measure, paths, calls, mode) for mode in MODES}
    for mode, samples in by_mode.items():
        report(samples, mode)
        console.print(f"plot: {plot(samples, mode, 'proxy_overhead_peer')}")
    summary(by_mode)


def run_alone(calls: int, mode: str) -> None:
    with http_demo_backend() as backend_url:
        directory = RESULTS / "proxy_overhead"
        directory.mkdir(parents=True, exist_ok=True)
        config = write_config(
            directory, {"backends": [{"name": "web", "transport": "streamable-http", "url": backend_url}]}
        )
        with running_gateway(config, "--no-optimizer") as gateway:
            paths = [("direct", backend_url, "slow_echo"), ("through vmcp", gateway.url, "web_slow_echo")]
            samples = anyio.run(measure, paths, calls, mode)
    report(samples, mode)
    console.print(f"plot: {plot(samples, mode, 'proxy_overhead')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--mode", choices=list(MODES), default="legacy", help="legacy = 2025-11-25 handshake")
    parser.add_argument("--peer", action="store_true", help="also mcp-proxy, both modes, gateways over stdio")
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV, help="where mcp-proxy is installed")
    parser.add_argument(
        "--before", metavar="REV", help="with --peer: also the gateway as it was at a git revision, same config"
    )
    args = parser.parse_args()
    if args.before and not args.peer:
        parser.error("--before needs --peer")
    if args.peer:
        run_peer(args.calls, args.peer_venv, args.before)
    else:
        run_alone(args.calls, args.mode)


if __name__ == "__main__":
    main()
