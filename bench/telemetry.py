"""What telemetry adds to a proxied call: the same tools/call through three `vmcp serve` processes in front of
one streamable-HTTP backend: telemetry off; the audit log (to a file) and metrics; those and traces
(exported over OTLP/HTTP to a local receiver). Interleaved in one run so machine noise hits all alike.

    .venv/bin/python bench/telemetry.py [--calls 400]

Prints p50/p95 of each, the added p50 and the median of the paired differences (each call against the
same round's call without telemetry, which cancels load bursts that hit both); then the watchers' own cost per proxied call measured in process
(a front operation and its backend request through audit, metrics and tracing): on the request's thread,
and in CPU time including the audit writer's and the span exporter's work (to a real OTLP receiver), which
the end-to-end difference cannot resolve below the noise of two HTTP hops; and, for scale, one span made
through the OpenTelemetry SDK's own Tracer.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

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
_AUDIT = {"enabled": True, "output": "audit.log"}
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {},
    "audit + metrics": {"audit": _AUDIT, "metrics": {"enabled": True}},
    "audit + metrics + traces": {"audit": _AUDIT, "metrics": {"enabled": True}, "tracing": {"enabled": True}},
    # Trace context propagated, nothing recorded or exported: what the spans' export costs, by difference.
    "… traces, sample_ratio 0": {
        "audit": _AUDIT,
        "metrics": {"enabled": True},
        "tracing": {"enabled": True, "sample_ratio": 0},
    },
}


async def measure(urls: dict[str, str], calls: int) -> dict[str, list[float]]:
    """Latencies per gateway; each round calls every gateway once, in a rotating order."""
    samples: dict[str, list[float]] = {name: [] for name in urls}
    async with contextlib.AsyncExitStack() as stack:
        clients = [(name, await stack.enter_async_context(Client(url, mode="legacy"))) for name, url in urls.items()]
        for _, client in clients:  # warm each (connections, validators, caches)
            for _ in range(30):
                await client.call_tool("web_slow_echo", {"message": "warm", "seconds": 0})
        for i in track(range(calls), description=f"{calls} interleaved calls per gateway", console=console):
            shift = i % len(clients)
            for name, client in clients[shift:] + clients[:shift]:
                started = time.perf_counter()
                result = await client.call_tool("web_slow_echo", {"message": "ping", "seconds": 0})
                samples[name].append((time.perf_counter() - started) * 1000)
                assert not result.is_error
    return samples


class Cost(NamedTuple):
    request_path: float  # µs per proxied call on the request's thread, writing and exporting held back
    total_cpu: float  # µs of process CPU per proxied call, the audit writer's and the exporter's work included


def watcher_cost(directory: Path, endpoint: str, calls: int = 2_000, rounds: int = 5) -> dict[str, Cost]:
    """What each watcher set adds per proxied call (a front tools/call and its backend request), over a
    router with no watchers (which makes no Operation at all). The sets take turns, `rounds` times, each
    with fresh watchers; the best of each is kept, so a burst of load on the shared machine counts less."""
    names = ["none", "metrics", "audit", "tracing", "all"]
    best = {name: Cost(float("inf"), float("inf")) for name in names}
    for turn in range(rounds):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            cost = _cost(name, directory / f"micro-{name}-{turn}.log", endpoint, calls)
            best[name] = Cost(
                min(best[name].request_path, cost.request_path), min(best[name].total_cpu, cost.total_cpu)
            )
    base = best.pop("none")
    return {
        name: Cost(cost.request_path - base.request_path, cost.total_cpu - base.total_cpu)
        for name, cost in best.items()
    }


def _cost(name: str, audit_file: Path, endpoint: str, calls: int) -> Cost:
    """One pass: the request path timed with exporting and writing held back (queues that hold the pass, no
    scheduled export, the writer gathering), then the CPU time to after close() has exported and written
    everything."""
    import mcp_types as types

    from vmcp_opt.auth import Caller, Identification
    from vmcp_opt.config import AuditConfig, TracingConfig
    from vmcp_opt.routing.exchange import Exchange
    from vmcp_opt.routing.operations import Operation, OperationWatcher, watched
    from vmcp_opt.telemetry.audit import AuditLog
    from vmcp_opt.telemetry.metrics import Metrics
    from vmcp_opt.telemetry.tracing import Tracing

    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(4 * calls)
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "600000"
    os.environ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = str(4 * calls)  # a full batch would start an export mid-pass
    audit_config = AuditConfig(enabled=True, output=str(audit_file), queue_size=calls, flush_interval=10)
    audit = AuditLog(audit_config) if name in ("audit", "all") else None
    metrics = Metrics(["web"]) if name in ("metrics", "all") else None
    tracing = Tracing(TracingConfig(enabled=True)) if name in ("tracing", "all") else None
    watchers: list[OperationWatcher] = [w for w in (audit, metrics, tracing) if w is not None]
    caller = Caller("session:bench", Identification.SESSION, "2025-11-25", address="127.0.0.1")
    exchange = Exchange("tools/call", request_id=1)
    result = types.CallToolResult(content=[types.TextContent(type="text", text="ping")])
    cpu_started, started = time.process_time(), time.perf_counter()
    for _ in range(calls):
        if not watchers:
            continue
        front = Operation("tools/call", caller, target="web_slow_echo", exchange=exchange)
        with watched(watchers, front):
            front.backend = "web"
            backend = Operation("tools/call", caller, "backend", "slow_echo", "web", exchange)
            with watched(watchers, backend):
                backend.result = result
            front.result = result
    request_path = (time.perf_counter() - started) / calls * 1e6
    if audit is not None:
        audit.close(timeout=120)
    if tracing is not None:
        tracing.close()
    return Cost(request_path, (time.process_time() - cpu_started) / calls * 1e6)


def sdk_span_cost(calls: int = 5_000) -> float:
    """Microseconds of one span made the SDK's usual way (`Tracer.start_span` with five attributes, `end`, a
    batch processor whose exporter drops): the floor `telemetry/tracing.py` avoids, two per proxied call."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropping(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    # The SDK's defaults, as a gateway runs (not the bench's environment, set for the passes above).
    provider.add_span_processor(
        BatchSpanProcessor(Dropping(), max_queue_size=2048, schedule_delay_millis=5000, max_export_batch_size=512)
    )
    tracer = provider.get_tracer("bench")
    attributes = {"mcp.method.name": "tools/call", "mcp.session.id": "session:bench", "vmcp.backend": "web"}
    attributes |= {"mcp.protocol.version": "2025-11-25", "gen_ai.tool.name": "web_slow_echo"}
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            tracer.start_span("tools/call web_slow_echo", attributes=attributes).end()
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    provider.shutdown()
    return best


def report(samples: dict[str, list[float]], costs: dict[str, Cost], sdk_span: float) -> None:
    calls = len(samples["off"])
    table = Table(title=f"tools/call through the gateway, ms ({calls} interleaved calls each)")
    for column in ("telemetry", "p50", "p95", "mean", "added p50", "median paired difference"):
        table.add_column(column, justify="right")
    off = samples["off"]
    base = percentile(off, 50)
    for name, values in samples.items():
        p50 = percentile(values, 50)
        # Each round calls every gateway once, back to back: a call's difference to the same round's call
        # without telemetry cancels the load both met.
        paired = statistics.median(value - without for value, without in zip(values, off, strict=True))
        table.add_row(
            name,
            f"{p50:.3f}",
            f"{percentile(values, 95):.3f}",
            f"{statistics.mean(values):.3f}",
            f"{p50 - base:+.3f}",
            f"{paired:+.3f}",
        )
    console.print(table)
    watchers = Table(title="watchers in process, µs per proxied call (a front operation and its backend request)")
    for column in ("watchers", "request path", "CPU incl. writing/exporting"):
        watchers.add_column(column, justify="right")
    for name, cost in costs.items():
        watchers.add_row(name, f"{cost.request_path:.1f}", f"{cost.total_cpu:.1f}")
    console.print(watchers)
    console.print(f"for scale, one span through the OpenTelemetry SDK's Tracer: {sdk_span:.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, otlp_receiver() as (endpoint, _, _):
        directory = Path(tmp)
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint}
        with http_demo_backend() as backend_url:
            backends = [{"name": "web", "transport": "streamable-http", "url": backend_url}]
            urls: dict[str, str] = {}
            with contextlib.ExitStack() as stack:
                for name, telemetry in VARIANTS.items():
                    (directory / name).mkdir()
                    config = write_config(directory / name, {"backends": backends, "telemetry": telemetry})
                    urls[name] = stack.enter_context(running_gateway(config, "--no-optimizer", env=env)).url
                samples = anyio.run(measure, urls, args.calls)
        costs = watcher_cost(directory, endpoint)
        sdk_span = sdk_span_cost()
    report(samples, costs, sdk_span)


if __name__ == "__main__":
    main()
