"""Where the gateway's CPU goes per find_tool, thread by thread, beside the same search in process.

    PYTHONPATH=. .venv/bin/python bench/find_tool_threads.py --index-dir DIR [--tools 10000] [--queries 300]

DIR holds an index built for the catalogue (as for `bench/find_tool_before_after.py`; a copy is used, nothing
is embedded). One gateway, one SDK client, the queries one after another; each thread's CPU time is read
from `/proc/PID/task/*/stat` before and after, so the table splits the gateway's CPU per call between the
event loop (the main thread), the worker thread that runs `ToolIndex.search` and the encoder's helper thread.
Then the same queries go through a `ToolIndex` in this process (process CPU time per search).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.find_tool_before_after import config, local_index, ready  # noqa: E402
from bench.find_tool_gateway import queries  # noqa: E402
from eval.metrics import percentile  # noqa: E402
from tests.support import Gateway, running_gateway, write_config  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[tuple[str, str], float]:
    """CPU seconds of each live thread of `pid`, keyed by (thread id, name)."""
    spent = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        spent[(task.name, name)] = (int(fields[11]) + int(fields[12])) / TICKS
    return spent


def print_latency(label: str, values: list[float], cpu_per_call: float) -> None:
    print(
        f"{label:>12}: p50 {percentile(values, 50):.2f} ms  p95 {percentile(values, 95):.2f} ms  "
        f"CPU {cpu_per_call * 1000:.2f} ms per call"
    )


async def through_gateway(gateway: Gateway, texts: list[str]) -> None:
    async with Client(gateway.url) as client:
        await ready(client, gateway)
        for text in texts[:20]:
            await client.call_tool("find_tool", {"query": text, "limit": 8})
        pid = gateway.proc.pid
        before, latencies = thread_cpu(pid), []
        for text in texts:
            begun = time.perf_counter()
            assert not (await client.call_tool("find_tool", {"query": text, "limit": 8})).is_error
            latencies.append((time.perf_counter() - begun) * 1000)
        after = thread_cpu(pid)
    spent = {key: (after[key] - before.get(key, 0.0)) / len(texts) for key in after}
    print_latency("gateway", latencies, sum(spent.values()))
    for (tid, name), per_call in sorted(spent.items(), key=lambda item: -item[1]):
        if per_call >= 0.00005:
            role = "the event loop" if int(tid) == pid else f"thread {tid} ({name})"
            print(f"{'':>14}{role}: {per_call * 1000:.2f} ms per call")


def in_process(index: Any, texts: list[str]) -> None:
    latencies, cpu_before = [], time.process_time()
    for text in texts:
        begun = time.perf_counter()
        index.search(text, 8)
        latencies.append((time.perf_counter() - begun) * 1000)
    print_latency("in process", latencies, (time.process_time() - cpu_before) / len(texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--tools", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    texts = queries(args.queries)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        shutil.copytree(args.index_dir, directory / "idx")
        (directory / "gateway").mkdir()
        settings = write_config(directory / "gateway", config(directory / "idx", args.tools))
        with running_gateway(settings, wait_ready=False) as gateway:
            anyio.run(through_gateway, gateway, texts)
        in_process(local_index(args.index_dir, args.tools), texts)


if __name__ == "__main__":
    main()
