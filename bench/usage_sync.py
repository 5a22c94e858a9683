"""What a usage-history sync costs (optimizer/usage_files.py), at 10k / 100k / 1M (tool, tool) pairs.

For each size: a history of that many pairs written to a temporary index_dir in the earlier one-line layout
(every release reads it), loaded by `FileUsageHistory` and synced once (left out: that sync migrates the earlier
layout). Then an asyncio loop learns a task every few milliseconds (`UsageGraph.add_to_task`, as the router's
observer does on the loop) while a saver thread syncs (`FileUsageHistory.save`) every 20 ms, as the gateway's
saver does every `optimizer.usage_sync_interval`. Printed: the syncs' CPU time (p50 / p95, the saver thread's
own), the event loop's longest wait (how late a 1 ms sleep woke, at worst: the GIL and the graph's lock both show
there) and the longest `add_to_task` (the lock alone); then, where the code has a journal, one compaction's CPU
time, the loop's longest wait during it (its heartbeat: a 1 ms sleep, how late it woke at worst) and the garbage
collector's full passes meanwhile (how many, the longest: each walks every tracked object with the GIL held, so
the loop waits it out). Last, `full_gc_ms`: one `gc.collect()` with the graph loaded, what every full collection
the gateway makes (any allocation may set one off) pays for the graph. Both collector figures are the CPU time of
the thread that collects: on a loaded host its wall time, and the loop's waits, grow with the other processes.

    .venv/bin/python bench/usage_sync.py                       # this tree
    .venv/bin/python bench/usage_sync.py --before HEAD~1       # and the same on another revision (git archive)
    .venv/bin/python bench/usage_sync.py --sizes 10000,100000 --syncs 10
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPANIONS = 50  # per tool: each tool with the 25 before and the 25 after it


def history_data(pairs: int) -> dict[str, Any]:
    """`pairs` undirected pairs over pairs / 25 tools, as the file keeps them."""
    tools = [f"backend_tool_{n}" for n in range(max(pairs * 2 // COMPANIONS, COMPANIONS + 1))]
    count = len(tools)
    together = {
        tool: {tools[(n + k) % count]: 3 for k in range(-COMPANIONS // 2, COMPANIONS // 2 + 1) if k}
        for n, tool in enumerate(tools)
    }
    return {"version": 1, "tasks": dict.fromkeys(tools, 30), "together": together}


async def learn_and_watch(graph: Any, stop: threading.Event) -> tuple[float, float]:
    """Learn a task every 5 ms until `stop`; the loop's longest lateness and the longest `add_to_task`."""
    lateness = adding = 0.0
    n = 0
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        lateness = max(lateness, time.perf_counter() - before - 0.001)
        if n % 5 == 0:
            start = time.perf_counter()
            graph.add_to_task(f"new_{n}", [f"backend_tool_{n % 97}"])
            adding = max(adding, time.perf_counter() - start)
        n += 1
    return lateness, adding


def timed_syncs(history: Any, graph: Any, syncs: int, stop: threading.Event, cpu: list[float]) -> None:
    try:
        for _ in range(syncs):
            time.sleep(0.02)
            start = time.thread_time()
            history.save(graph)
            cpu.append(time.thread_time() - start)
    finally:
        stop.set()


class FullCollections:
    """The garbage collector's full (generation 2) passes while it is installed: how many, and the longest (CPU s)."""

    def __init__(self) -> None:
        self.count, self.longest, self._started = 0, 0.0, 0.0

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._observe)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.count += 1
            self.longest = max(self.longest, time.thread_time() - self._started)


def full_gc_seconds() -> float:
    """One full collection's CPU time, now."""
    start = time.thread_time()
    gc.collect()
    return time.thread_time() - start


async def measure(history: Any, graph: Any, syncs: int) -> tuple[list[float], float, float]:
    stop, cpu = threading.Event(), []
    saver = threading.Thread(target=timed_syncs, args=(history, graph, syncs, stop, cpu))
    saver.start()
    lateness, adding = await learn_and_watch(graph, stop)
    saver.join()
    return cpu, lateness, adding


def one_size(pairs: int, syncs: int) -> dict[str, Any]:
    from vmcp_opt.optimizer import usage_files
    from vmcp_opt.optimizer.usage_files import FileUsageHistory

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "usage.json"
        path.write_text(json.dumps(history_data(pairs), separators=(",", ":")), encoding="utf-8")
        history = FileUsageHistory(path)
        graph = history.load()
        graph.add_to_task("warm_up", ["backend_tool_0"])
        history.save(graph)  # left out: it migrates the earlier layout
        cpu, lateness, adding = asyncio.run(measure(history, graph, syncs))
        result = {
            "pairs": graph.stats()["pairs"],
            "sync_cpu_ms_p50": 1000 * statistics.median(cpu),
            "sync_cpu_ms_p95": 1000 * sorted(cpu)[max(0, round(0.95 * len(cpu)) - 1)],
            "loop_longest_wait_ms": 1000 * lateness,
            "longest_add_ms": 1000 * adding,
        }
        if hasattr(usage_files, "JOURNAL_RATIO"):  # this layout: what one compaction costs, now and then
            ratio, usage_files.JOURNAL_RATIO = usage_files.JOURNAL_RATIO, 0.0
            gc.collect()  # the full passes counted are those the compaction sets off, not what the set-up left pending
            try:
                with FullCollections() as full:
                    cpu, lateness, _ = asyncio.run(measure(history, graph, 1))
            finally:
                usage_files.JOURNAL_RATIO = ratio
            result["compaction_cpu_ms"] = 1000 * cpu[0]
            result["compaction_loop_longest_wait_ms"] = 1000 * lateness
            result["compaction_full_gcs"] = full.count
            result["compaction_longest_full_gc_ms"] = 1000 * full.longest
        result["full_gc_ms"] = 1000 * full_gc_seconds()
        return result


def run_here(sizes: list[int], syncs: int, label: str) -> None:
    for pairs in sizes:
        figures = one_size(pairs, syncs)
        shown = "  ".join(
            f"{key} {value:.1f}" if isinstance(value, float) else f"{key} {value}"
            for key, value in figures.items()
            if key != "pairs"
        )
        print(f"{label:>6} {figures['pairs']:>9,} pairs  {shown}", flush=True)


def run_before(revision: str, sizes: list[int], syncs: int) -> None:
    """This script over the `vmcp_opt` of `revision`, exported by `git archive` (nothing in the repository
    changes) and put first on the path."""
    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(["git", "archive", revision, "vmcp_opt"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
        env = {**os.environ, "PYTHONPATH": tree}
        args = ["--sizes", ",".join(map(str, sizes)), "--syncs", str(syncs), "--label", revision[:6]]
        subprocess.run([sys.executable, __file__, *args], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="pair counts, comma-separated")
    parser.add_argument("--syncs", type=int, default=15, help="syncs measured per size")
    parser.add_argument("--before", help="a git revision to measure first, for comparison")
    parser.add_argument("--label", default="after", help=argparse.SUPPRESS)
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    if options.before:
        run_before(options.before, sizes, options.syncs)
    run_here(sizes, options.syncs, options.label)


if __name__ == "__main__":
    main()
