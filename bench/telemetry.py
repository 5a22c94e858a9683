"""What telemetry adds to a proxied call: the same tools/call through two `vmcp serve` processes in front of
one streamable-HTTP backend, one with telemetry off and one with the audit log (to a file), metrics and
traces (exported over OTLP/HTTP to a local receiver) on, interleaved in one run so machine noise hits both.

    .venv/bin/python bench/telemetry.py [--calls 400]

Prints p50/p95 of both and the added p50; then the watchers' own cost per proxied call measured in process
(a front operation and its backend request through audit, metrics and tracing), which the end-to-end
difference cannot resolve below the noise of two HTTP hops.
"""

from __future__ import annotations

import argparse
import os
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

from eval.metrics import percentile  # noqa: E402
from tests.support import http_demo_backend, running_gateway, write_config  # noqa: E402
from tests.test_telemetry_export import otlp_receiver  # noqa: E402

console = Console()
TELEMETRY_ON = {
    "audit": {"enabled": True, "output": "audit.log"},
    "metrics": {"enabled": True},
    "tracing": {"enabled": True},
}


async def measure(off_url: str, on_url: str, calls: int) -> tuple[list[float], list[float]]:
    off: list[float] = []
    on: list[float] = []
    async with Client(off_url, mode="legacy") as plain, Client(on_url, mode="legacy") as watched:
        paths = ((plain, off), (watched, on))
        for client, _ in paths:  # warm both (connections, validators, caches)
            for _ in range(30):
                await client.call_tool("web_slow_echo", {"message": "warm", "seconds": 0})
        for i in track(range(calls), description=f"{calls} interleaved calls per gateway", console=console):
            for client, sink in paths if i % 2 == 0 else reversed(paths):
                started = time.perf_counter()
                result = await client.call_tool("web_slow_echo", {"message": "ping", "seconds": 0})
                sink.append((time.perf_counter() - started) * 1000)
                assert not result.is_error
    return off, on


def watcher_cost(directory: Path, endpoint: str, calls: int = 5_000) -> dict[str, float]:
    """Microseconds per proxied call (a front tools/call and its backend request) each watcher set adds."""
    import mcp_types as types

    from vmcp_opt.auth import Caller, Identification
    from vmcp_opt.config import AuditConfig, TracingConfig
    from vmcp_opt.routing.exchange import Exchange
    from vmcp_opt.routing.operations import Operation, OperationWatcher, watched
    from vmcp_opt.telemetry.audit import AuditLog
    from vmcp_opt.telemetry.metrics import Metrics
    from vmcp_opt.telemetry.tracing import Tracing

    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
    audit = AuditLog(AuditConfig(enabled=True, output=str(directory / "micro-audit.log")))
    metrics = Metrics(["web"])
    tracing = Tracing(TracingConfig(enabled=True))
    caller = Caller("session:bench", Identification.SESSION, "2025-11-25", address="127.0.0.1")
    exchange = Exchange("tools/call", request_id=1)
    result = types.CallToolResult(content=[types.TextContent(type="text", text="ping")])
    sets: dict[str, list[OperationWatcher]] = {
        "none": [],
        "metrics": [metrics],
        "audit": [audit],
        "tracing": [tracing],
        "all": [audit, metrics, tracing],
    }
    costs: dict[str, float] = {}
    for name, watchers in sets.items():
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(calls):
                if not watchers:  # the router with no watchers makes no Operation at all
                    continue
                front = Operation("tools/call", caller, target="web_slow_echo", exchange=exchange)
                with watched(watchers, front):
                    front.backend = "web"
                    backend = Operation("tools/call", caller, "backend", "slow_echo", "web", exchange)
                    with watched(watchers, backend):
                        backend.result = result
                    front.result = result
            best = min(best, (time.perf_counter() - started) / calls * 1e6)
        costs[name] = best
    audit.close()
    tracing.close()
    return {name: cost - costs["none"] for name, cost in costs.items() if name != "none"}


def report(off: list[float], on: list[float], costs: dict[str, float]) -> None:
    table = Table(title=f"tools/call through the gateway, ms ({len(off)} interleaved calls each)")
    for column in ("telemetry", "p50", "p95", "mean"):
        table.add_column(column, justify="right")
    for name, samples in (("off", off), ("audit + metrics + traces", on)):
        table.add_row(
            name, f"{percentile(samples, 50):.3f}", f"{percentile(samples, 95):.3f}", f"{statistics.mean(samples):.3f}"
        )
    console.print(table)
    console.print(f"added p50 end to end: {percentile(on, 50) - percentile(off, 50):+.3f} ms")
    console.print(
        "watchers in process, per proxied call (front + backend operation): "
        + ", ".join(f"{name} {cost:.1f} µs" for name, cost in costs.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, otlp_receiver() as (endpoint, _, _):
        directory = Path(tmp)
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint}
        with http_demo_backend() as backend_url:
            backends = [{"name": "web", "transport": "streamable-http", "url": backend_url}]
            (directory / "off").mkdir()
            (directory / "on").mkdir()
            off_config = write_config(directory / "off", {"backends": backends})
            on_config = write_config(directory / "on", {"backends": backends, "telemetry": TELEMETRY_ON})
            with (
                running_gateway(off_config, "--no-optimizer") as off_gateway,
                running_gateway(on_config, "--no-optimizer", env=env) as on_gateway,
            ):
                off, on = anyio.run(measure, off_gateway.url, on_gateway.url, args.calls)
        costs = watcher_cost(directory, endpoint)
    report(off, on, costs)


if __name__ == "__main__":
    main()
