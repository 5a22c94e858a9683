"""Memory of the serving process on the demo config, per encoder: `vmcp serve` with torch against ONNX Runtime
(fp32 and int8 graphs).

    .venv/bin/python bench/footprint.py [--rounds 2] [--calls 50] [--encoders "onnx fp32,onnx int8"]

For each round and encoder (alternating, so load on a shared machine hits both), starts the bundled demo
(`examples/demo.yaml`, what `make serve` runs: seven backends, the optimizer on) with
`VMCP_OPTIMIZER__ENCODER` and `VMCP_OPTIMIZER__PRECISION` set and a fresh index directory, waits until find_tool ranks with vectors, then
prints the gateway process's RSS (psutil; its backends are separate processes and not counted), the RSS
after `--calls` distinct find_tool requests through a real MCP client, the seconds from start until vectors
were ready, and whether libtorch is mapped into the process (/proc/<pid>/maps). The ONNX export must
already be cached (`vmcp models export`; `make setup` does it), else the first onnx start includes it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import psutil
from mcp import Client
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import running_gateway, torch_mapped  # noqa: E402

DEMO = ROOT / "examples" / "demo.yaml"
# Each variant's settings (`optimizer.encoder`, `optimizer.precision`).
ENCODERS: dict[str, dict[str, str]] = {
    "torch": {"VMCP_OPTIMIZER__ENCODER": "torch"},
    "onnx fp32": {"VMCP_OPTIMIZER__ENCODER": "onnx", "VMCP_OPTIMIZER__PRECISION": "fp32"},
    "onnx int8": {"VMCP_OPTIMIZER__ENCODER": "onnx", "VMCP_OPTIMIZER__PRECISION": "int8"},
}
QUERIES = [
    f"{verb} {thing}"
    for verb in ("find", "show me", "I need to", "how do I", "tool to")
    for thing in (
        "the current time in Tokyo",
        "commit my changes to git",
        "download a web page as markdown",
        "remember a fact about a person",
        "list files in a directory",
        "set an alarm for 7am",
        "convert a time between timezones",
        "search files for a pattern",
        "add two numbers",
        "read a file",
    )
]
console = Console()


async def vectors_ready(url: str) -> None:
    """Until find_tool ranks with vectors; a loaded machine may drop a slow connection, so each try reconnects."""
    with anyio.fail_after(900):
        while True:
            try:
                async with Client(url) as client:
                    answer = (await client.call_tool("find_tool", {"query": "warm up"})).structured_content or {}
                if answer.get("ranking") == "hybrid":
                    return
            except Exception as exc:  # the gateway is still starting or dropped the connection: try again
                console.print(f"[dim]waiting for vectors: {type(exc).__name__}[/]")
            await anyio.sleep(0.5)


async def measure(url: str, pid: int, calls: int, started: float) -> dict[str, float]:
    process = psutil.Process(pid)
    await vectors_ready(url)
    ready = time.perf_counter() - started
    rss_ready = process.memory_info().rss
    async with Client(url) as client:
        for i in range(calls):
            await client.call_tool("find_tool", {"query": QUERIES[i % len(QUERIES)] + f" #{i}"})
    rss_after = process.memory_info().rss
    return {"ready_s": ready, "rss_ready_mb": rss_ready / 2**20, "rss_after_mb": rss_after / 2**20}


def run_once(encoder: str, calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as index_dir:
        env = {**ENCODERS[encoder], "VMCP_OPTIMIZER__INDEX_DIR": index_dir}
        started = time.perf_counter()
        with running_gateway(DEMO, env=env, ready_timeout=300) as gateway:
            try:
                figures = anyio.run(measure, gateway.url, gateway.proc.pid, calls, started)
                figures["torch_loaded"] = float(bool(torch_mapped(gateway.proc.pid)))
            finally:
                gateway.log.unlink(missing_ok=True)  # written beside the config, i.e. into examples/
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--encoders", default=",".join(ENCODERS), help=f"Some of: {', '.join(ENCODERS)}.")
    args = parser.parse_args()
    names = [name.strip() for name in args.encoders.split(",")]
    if unknown := set(names) - set(ENCODERS):
        parser.error(f"unknown encoders {sorted(unknown)}; known: {', '.join(ENCODERS)}")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_number in range(args.rounds):
        for encoder in names if round_number % 2 == 0 else reversed(names):
            figures = run_once(encoder, args.calls)
            console.print(f"round {round_number + 1} {encoder}: {figures}")
            runs[encoder].append(figures)
    table = Table(title=f"vmcp serve, examples/demo.yaml, median of {args.rounds} round(s)")
    for column in ("encoder", "RSS ready MB", f"RSS after {args.calls} find_tool MB", "start to vectors s", "torch"):
        table.add_column(column)
    for encoder, figures in runs.items():
        table.add_row(
            encoder,
            f"{statistics.median(f['rss_ready_mb'] for f in figures):.0f}",
            f"{statistics.median(f['rss_after_mb'] for f in figures):.0f}",
            f"{statistics.median(f['ready_s'] for f in figures):.1f}",
            "loaded" if any(f["torch_loaded"] for f in figures) else "not loaded",
        )
    console.print(table)


if __name__ == "__main__":
    main()
