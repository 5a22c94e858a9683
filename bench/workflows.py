"""Independent workflow steps side by side against the same steps in sequence, through the real gateway.

    .venv/bin/python bench/workflows.py [--steps 4] [--seconds 0.25] [--runs 5]

Two workflows of `--steps` calls of the demo backend's `slow_echo` (each waits `--seconds`): one with no
`depends_on` (the executor runs them at once), one chained step after step. Both are called over
streamable HTTP through `vmcp serve`, alternately; prints the median of each and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import demo_backend, running_gateway, write_config  # noqa: E402

console = Console()


def workflows(steps: int, seconds: float) -> list[dict[str, Any]]:
    def step(i: int, chained: bool) -> dict[str, Any]:
        arguments = {"message": str(i), "seconds": seconds}
        return {
            "id": f"s{i}",
            "tool": "demo_slow_echo",
            "arguments": arguments,
            **({"depends_on": [f"s{i - 1}"]} if chained and i else {}),
        }

    return [
        {"name": "side_by_side", "description": "independent steps", "steps": [step(i, False) for i in range(steps)]},
        {"name": "one_by_one", "description": "chained steps", "steps": [step(i, True) for i in range(steps)]},
    ]


async def measure(url: str, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"side_by_side": [], "one_by_one": []}
    async with Client(url) as client:
        for name in times:  # warm: the backend session, the validators
            await client.call_tool(name, {})
        for run in range(runs):
            for name in times if run % 2 == 0 else reversed(list(times)):
                started = time.perf_counter()
                result = await client.call_tool(name, {})
                times[name].append(time.perf_counter() - started)
                assert not result.is_error, result
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.25)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        config = {"backends": [demo_backend("demo")], "workflows": workflows(args.steps, args.seconds)}
        with running_gateway(write_config(Path(directory), config)) as gateway:
            times = anyio.run(measure, gateway.url, args.runs)
    table = Table(title=f"{args.steps} steps of {args.seconds:g} s each, {args.runs} runs, seconds")
    for column in ("workflow", "median", "min", "max"):
        table.add_column(column, justify="right")
    for name, samples in times.items():
        table.add_row(name, f"{statistics.median(samples):.3f}", f"{min(samples):.3f}", f"{max(samples):.3f}")
    console.print(table)
    ratio = statistics.median(times["one_by_one"]) / statistics.median(times["side_by_side"])
    console.print(f"sequential / parallel: [bold]{ratio:.2f}x[/] (ideal {args.steps}x)")


if __name__ == "__main__":
    main()
