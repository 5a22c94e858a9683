"""find_tool through the real gateway with a real MCP client, over a catalogue of N real tool descriptions.

    .venv/bin/python bench/find_tool_gateway.py [--tools 10000] [--queries 200]

Starts `vmcp serve` (optimizer on, a fresh index directory) in front of examples/backends/catalog_server.py,
waits until find_tool ranks with vectors, then prints: time to the first tools/list answer, time until the
vectors were ready (cold build), find_tool latency p50/p95 through the gateway, the same queries run
in-process on the same index as a baseline ratio, the same calls from a plain HTTP client that reads only
the bytes (the gateway's share without the SDK client's parsing), and the tokens of tools/list with and without the
optimizer. Queries are ToolRet apigen queries. Writes bench/results/find_tool_gateway.png.

While the gateway starts (launch to vectors ready), a thread asks `/healthz` every 20 ms: the slowest answer
is how long the event loop stood still while the catalogue was indexed and counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from rich.console import Console
from rich.progress import track

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.plots import latency_histogram  # noqa: E402
from bench.stalls import stall_watch  # noqa: E402
from eval.metrics import percentile  # noqa: E402
from tests.support import raw_session, running_gateway, write_config  # noqa: E402
from vmcp_opt.optimizer.documents import ToolRecord  # noqa: E402

DATA = ROOT.parent / "shared" / "eval-data"
RESULTS = ROOT / "bench" / "results"
console = Console()


def queries(count: int) -> list[str]:
    path = DATA / "toolret_subsets" / "apigen" / "queries.json"
    return [entry["query"] for entry in json.loads(path.read_text(encoding="utf-8"))[:count]]


@contextmanager
def health_probe(url: str, started: float) -> Iterator[Callable[[], tuple[float, float]]]:
    """`/healthz` asked every 20 ms from another process (bench/stalls.py) until the returned `stop` is
    called; `stop` gives the slowest answer (ms) and when it was asked (s after `started`, a
    `time.monotonic()` reading)."""
    with stall_watch(url.rsplit("/mcp", 1)[0] + "/healthz", interval=0.02) as stop:

        def since_start() -> tuple[float, float]:
            slowest, asked = stop()
            return slowest, max(0.0, asked - started)

        yield since_start


async def through_gateway(
    url: str, texts: list[str], started: float, log: Callable[[], str], stop_probe: Callable[[], tuple[float, float]]
) -> tuple[float, float, tuple[float, float], list[float], dict[str, int]]:
    """First tools/list and vectors ready (s after launch), the health probe's slowest answer, find_tool's
    latencies (ms) and the last answer's token figures."""
    first_list = 0.0
    with anyio.fail_after(900):
        while True:
            try:
                async with Client(url) as client:
                    await client.list_tools()
                    first_list = time.perf_counter() - started
                    break
            except Exception:
                await anyio.sleep(0.05)
    async with Client(url) as client:
        with anyio.fail_after(1800), console.status("waiting for the vectors (cold index build)"):
            while True:
                answer = (await client.call_tool("find_tool", {"query": "warm up"})).structured_content or {}
                if answer.get("ranking") == "hybrid":
                    break
                await anyio.sleep(0.5)
        vectors_ready = time.perf_counter() - started
        with anyio.fail_after(300), console.status("waiting for the answer token counts (after the vectors)"):
            while True:
                if "answer tokens counted" in log():
                    break
                await anyio.sleep(0.5)
        slowest = stop_probe()  # before anything is timed
        latencies: list[float] = []
        for text in track(texts, description="find_tool through the gateway", console=console):
            begun = time.perf_counter()
            result = await client.call_tool("find_tool", {"query": text, "limit": 8})
            latencies.append((time.perf_counter() - begun) * 1000)
            assert not result.is_error
        tokens = dict((result.structured_content or {}).get("tokens", {}))
    return first_list, vectors_ready, slowest, latencies, tokens


def plain_http(url: str, texts: list[str]) -> list[float]:
    """The same calls from a client that only reads the response's bytes (one keep-alive connection): the
    gateway's share of the round trip, without the SDK client's parsing and validation of the answer."""
    headers = raw_session(url)
    latencies = []
    with httpx2.Client(headers=headers, timeout=30) as client:
        for i, text in enumerate(texts):
            call = {"jsonrpc": "2.0", "id": i + 2, "method": "tools/call"}
            call["params"] = {"name": "find_tool", "arguments": {"query": text, "limit": 8}}
            begun = time.perf_counter()
            response = client.post(url, json=call)
            body = response.content
            latencies.append((time.perf_counter() - begun) * 1000)
            assert response.status_code == 200 and b'"isError":true' not in body, body[:200]
    return latencies


def catalogue_records(tools: int) -> list[ToolRecord]:
    """The catalog backend's first `tools` tools as the gateway indexes them (`ToolRecord`s, routable names)."""
    sys.argv = ["catalog"]
    from examples.backends.catalog_server import load_tools

    return [
        ToolRecord(
            name=f"catalog_{t.name}",
            backend="catalog",
            description=t.description or "",
            input_schema=t.input_schema,
            original_name=t.name,
        )
        for t in load_tools(DATA, tools)
    ]


def in_process(index_dir: Path, tools: int, texts: list[str]) -> list[float]:
    """The same ranking code on the same persisted vectors, without the gateway and the MCP round trip."""
    from vmcp_opt.config import OptimizerConfig
    from vmcp_opt.optimizer.index import ToolIndex

    records = catalogue_records(tools)
    index = ToolIndex(OptimizerConfig(), index_dir)
    index.update(records)
    latencies = []
    for text in texts:
        begun = time.perf_counter()
        index.search(text, 8)
        latencies.append((time.perf_counter() - begun) * 1000)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"benchmark data not found at {DATA}")
    texts = queries(args.queries)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        backend = {
            "name": "catalog",
            "command": sys.executable,
            "args": [
                str(ROOT / "examples" / "backends" / "catalog_server.py"),
                "--tools",
                str(args.tools),
                "--data",
                str(DATA),
            ],
        }
        config = {
            "backends": [backend],
            # No query cache: the plain HTTP client asks the same queries after the MCP client, and each
            # must be embedded again, as in the first pass and in process.
            "optimizer": {"enabled": True, "index_dir": str(directory / "idx"), "query_cache_size": 0},
            "timeouts": {"connect": 120},
        }
        started = time.perf_counter()
        with (
            running_gateway(write_config(directory, config), wait_ready=False, ready_timeout=120) as gateway,
            health_probe(gateway.url, time.monotonic() - (time.perf_counter() - started)) as stop_probe,
        ):
            first_list, ready, slowest, gateway_ms, tokens = anyio.run(
                through_gateway, gateway.url, texts, started, gateway.output, stop_probe
            )
            plain_ms = plain_http(gateway.url, texts)
        local_ms = in_process(directory / "idx", args.tools, texts)
    p50_gw, p50_local = percentile(gateway_ms, 50), percentile(local_ms, 50)
    console.print(f"[bold]{args.tools} tools[/], {len(texts)} queries")
    console.print(f"  first tools/list answer      {first_list:.2f} s after launch")
    console.print(f"  vectors ready (cold build)   {ready:.1f} s after launch")
    console.print(f"  slowest /healthz in start-up {slowest[0]:.0f} ms (asked {slowest[1]:.1f} s after launch)")
    console.print(
        f"  find_tool via gateway        p50 {p50_gw:.2f} ms  p95 {percentile(gateway_ms, 95):.2f} ms  mean {statistics.mean(gateway_ms):.2f}"
    )
    console.print(
        f"  via gateway, plain HTTP      p50 {percentile(plain_ms, 50):.2f} ms  p95 {percentile(plain_ms, 95):.2f} ms"
        "  (a client reading bytes only)"
    )
    console.print(f"  same search in process       p50 {p50_local:.2f} ms  p95 {percentile(local_ms, 95):.2f} ms")
    console.print(
        f"  gateway / in-process (p50)   {p50_gw / p50_local:.2f}x (+{p50_gw - p50_local:.2f} ms for MCP over HTTP)"
    )
    console.print(
        f"  tokens: full tools/list {tokens.get('full_tool_list')}, one find_tool answer {tokens.get('this_answer')}"
    )
    path = latency_histogram(
        {
            "in process (ToolIndex.search)": local_ms,
            "through vmcp (MCP client)": gateway_ms,
            "through vmcp (plain HTTP)": plain_ms,
        },
        RESULTS / "find_tool_gateway.png",
        xlabel="find_tool latency (ms)",
        ylabel="queries",
        title=f"find_tool at {args.tools} tools",
    )
    console.print(f"plot: {path}")


if __name__ == "__main__":
    main()
