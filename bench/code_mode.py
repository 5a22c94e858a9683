"""A script of N tool calls against the same N calls made by the client, through the real gateway.

    .venv/bin/python bench/code_mode.py [--calls 1 3 10] [--rounds 30] [--pause 0.1]

For each N: one `execute_tool_script` whose script makes N calls of the demo backend's `whoami` one after
another (`call_tool` in a loop), one whose `call_tools` makes them at once, and the client making the same N
calls itself one after another, over streamable HTTP through `vmcp serve`, interleaved round by round. Prints
p50/p95 of each and the ratios; writes bench/results/code_mode.json and a histogram per N. The script's fixed cost
(a process a script) shows at N=1; what a script saves is the client's round trips (and, for an agent, the
model's turns, which this bench does not have). Requests are `--pause` seconds apart (not timed), as an agent's
are: the gateway starts the next script's interpreter while a script runs, which takes ~35 ms to load; at
`--pause 0` back-to-back scripts wait for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.plots import latency_histogram  # noqa: E402
from eval.metrics import percentile  # noqa: E402
from tests.support import demo_backend, running_gateway, write_config  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TOOL = "demo_whoami"
console = Console()


def scripts(calls: int) -> dict[str, str]:
    return {
        "script, one by one": f"[call_tool('{TOOL}')['name'] for _ in range({calls})]",
        "script, call_tools": f"[r['name'] for r in call_tools([['{TOOL}', {{}}]] * {calls})]",
    }


async def measure(url: str, counts: list[int], rounds: int, pause: float) -> dict[int, dict[str, list[float]]]:
    times: dict[int, dict[str, list[float]]] = {}
    async with Client(url) as client:
        await client.list_tools()
        for calls in counts:
            paths = [*scripts(calls), "client, one by one"]
            times[calls] = {path: [] for path in paths}
            for round_ in range(rounds + 1):  # round 0 warms the backend session and the validators
                for path in paths if round_ % 2 else reversed(paths):
                    await anyio.sleep(pause)
                    started = time.perf_counter()
                    if path.startswith("client"):
                        for _ in range(calls):
                            assert not (await client.call_tool(TOOL, {})).is_error
                    else:
                        result = await client.call_tool("execute_tool_script", {"script": scripts(calls)[path]})
                        assert not result.is_error, result
                    if round_:
                        times[calls][path].append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between requests (not timed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        config = {"backends": [demo_backend("demo")], "code_mode": {"enabled": True, "max_calls": max(args.calls)}}
        with running_gateway(write_config(Path(directory), config), "--log-level", "warning") as gateway:
            times = anyio.run(measure, gateway.url, args.calls, args.rounds, args.pause)
    title = f"N calls of {TOOL} through the gateway, {args.rounds} interleaved rounds, {args.pause:g} s apart, ms"
    table = Table(title=title)
    for column in ("N", "path", "p50", "p95", "p50 / client's"):
        table.add_column(column, justify="right")
    report = {}
    for calls, paths in times.items():
        client_p50 = percentile(paths["client, one by one"], 50)
        for path, samples in paths.items():
            p50, p95 = percentile(samples, 50), percentile(samples, 95)
            report[f"{calls} {path}"] = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2)}
            table.add_row(str(calls), path, f"{p50:.2f}", f"{p95:.2f}", f"{p50 / client_p50:.2f}x")
        latency_histogram(
            paths, RESULTS / f"code_mode_{calls}.png", xlabel="ms", ylabel="requests", title=f"{calls} calls"
        )
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "code_mode.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {RESULTS / 'code_mode.json'} and code_mode_<N>.png")


if __name__ == "__main__":
    main()
