"""Where the gateway's CPU goes per find_tool, thread by thread, beside the same search in process.

    PYTHONPATH=. .venv/bin/python bench/find_tool_threads.py --index-dir DIR [--tools 10000] [--queries 300]
        [--package-dir TREE]

DIR holds an index built for the catalogue (as for `bench/find_tool_before_after.py`; a copy is used, nothing
is embedded). One gateway, one SDK client, the queries one after another; each thread's CPU time and voluntary
context switches are read from `/proc/PID/task/*/` before and after, so the table splits the gateway's CPU and
wake-ups per call between the event loop (the main thread), the worker thread that runs `ToolIndex.search`, the
encoder's helper thread and any other (a thread woken per call costs a switch or more, and on two busy cores each
wake-up may wait for a core). Then the same queries go through a `ToolIndex` in this process (process CPU time per
search). `--package-dir TREE` runs the gateway of the `vmcp_opt` under TREE instead (a `git archive` of another
revision: before and after from one script, the in-process search being this tree's).
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


def thread_switches(pid: int) -> dict[str, int]:
    """Voluntary context switches of each live thread of `pid` (waits: a lock, a queue, the GIL, a socket), by id."""
    switches = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        switches[task.name] = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
    return switches


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
        before, switched, latencies = thread_cpu(pid), thread_switches(pid), []
        for text in texts:
            begun = time.perf_counter()
            assert not (await client.call_tool("find_tool", {"query": text, "limit": 8})).is_error
            latencies.append((time.perf_counter() - begun) * 1000)
        after, switches = thread_cpu(pid), thread_switches(pid)
    spent = {key: (after[key] - before.get(key, 0.0)) / len(texts) for key in after}
    waits = {tid: (count - switched.get(tid, 0)) / len(texts) for tid, count in switches.items()}
    print_latency("gateway", latencies, sum(spent.values()))
    print(f"{'':>14}voluntary context switches: {sum(waits.values()):.2f} per call")
    for (tid, name), per_call in sorted(spent.items(), key=lambda item: -item[1]):
        if per_call >= 0.00005 or waits.get(tid, 0.0) >= 0.05:
            role = "the event loop" if int(tid) == pid else f"thread {tid} ({name})"
            print(f"{'':>14}{role}: {per_call * 1000:.2f} ms per call, {waits.get(tid, 0.0):.2f} switches")


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
    parser.add_argument("--package-dir", type=Path, help="run the vmcp_opt package under this directory")
    args = parser.parse_args()
    texts = queries(args.queries)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        shutil.copytree(args.index_dir, directory / "idx")
        (directory / "gateway").mkdir()
        settings = write_config(directory / "gateway", config(directory / "idx", args.tools))
        tree = args.package_dir.resolve() if args.package_dir is not None else None
        env = {"PYTHONPATH": str(tree)} if tree is not None else None
        with running_gateway(settings, wait_ready=False, env=env, cwd=tree) as gateway:
            anyio.run(through_gateway, gateway, texts)
        in_process(local_index(args.index_dir, args.tools), texts)


if __name__ == "__main__":
    main()
