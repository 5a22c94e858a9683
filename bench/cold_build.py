"""Cold index build as the gateway does it: `ToolIndex.update` on the served config, in a fresh process.

    PYTHONPATH=. .venv/bin/python bench/cold_build.py --tools 10000 --paths child,onnx
    PYTHONPATH=. .venv/bin/python bench/cold_build.py --tools 100000 --paths child
    PYTHONPATH=. .venv/bin/python bench/cold_build.py --tools 10000 --paths child --batch-size ,64,8,1,64,

Each (tools, path) runs in its own process with an empty index directory, which loads the embedder the way
the gateway does (`load_configured_embedder`: ONNX Runtime fp32 for queries) and builds:
- child: the served default, documents embedded in a child process on the lean torch encoder
  (optimizer/bulk_embed.py, `optimizer.bulk_process_min`);
- onnx: `bulk_process_min: 0`, documents embedded in process on ONNX Runtime (2 bulk threads).
Then `--queries` find_tool searches (query cache off; queries and catalogue of bench/optimizer.py). Reported:
build seconds (model load included) and documents per second, how long the bulk child had been starting
when its texts came, the measuring process's RSS before the build
(catalogue and documents), after it and after the searches, the bulk child's peak RSS, CPU seconds of the
process and its children, find_tool p50/p95, whether torch was imported, and the load average. Prints a table;
writes bench/results/cold_build.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.optimizer import base_tools, catalogue, queries, rss_mb  # noqa: E402
from vmcp_opt.config import OptimizerConfig  # noqa: E402
from vmcp_opt.optimizer.embedding import default_model_cache  # noqa: E402
from vmcp_opt.optimizer.index import ToolIndex  # noqa: E402

RESULTS = ROOT / "bench" / "results"
console = Console()


def one(tools: int, path: str, query_count: int, batch_size: int | None = None) -> dict[str, Any]:
    """One build and its searches in this process (a fresh one: `--one`)."""
    load_before = os.getloadavg()[0]
    records = catalogue(tools, base_tools())
    texts = queries(query_count)
    rss_before = rss_mb()
    config = OptimizerConfig(query_cache_size=0, bulk_process_min=1000 if path == "child" else 0, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="vmcp-cold-") as tmp:
        index = ToolIndex(config, Path(tmp), model_cache=default_model_cache())
        cpu = os.times()
        stats = index.update(records, progress=sys.stderr.isatty())
        cpu_after = os.times()
        rss_built = rss_mb()
        for text in texts[:5]:
            index.search(text)
        samples = []
        for text in texts:
            started = time.perf_counter()
            index.search(text, limit=8)
            samples.append((time.perf_counter() - started) * 1000)
        rss_searched = rss_mb()
    child_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    # How long the bulk child had been starting when its texts came (it starts before the documents are built).
    head_start = getattr(getattr(index.embedder, "bulk", None), "head_start", None)
    return {
        "tools": tools,
        "path": path,
        "batch_size": batch_size,
        "build_s": stats.seconds,
        "docs_per_s": stats.embedded / stats.seconds,
        "cpu_s": {
            "process": (cpu_after.user + cpu_after.system) - (cpu.user + cpu.system),
            "children": (cpu_after.children_user + cpu_after.children_system)
            - (cpu.children_user + cpu.children_system),
        },
        "rss_mb": {"before_build": rss_before, "after_build": rss_built, "after_searches": rss_searched},
        "child_peak_rss_mb": child_peak_mb if path == "child" else None,
        "child_head_start_s": head_start if path == "child" else None,
        "find_tool_ms": {"p50": float(np.percentile(samples, 50)), "p95": float(np.percentile(samples, 95))},
        "queries": len(samples),
        "torch_imported": "torch" in sys.modules,
        "load_average": [load_before, os.getloadavg()[0]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", default="10000", help="Catalogue sizes, comma-separated.")
    parser.add_argument("--paths", default="child,onnx", help="child (served default), onnx (in process).")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--batch-size", default="", help="optimizer.batch_size values, comma-separated (default: the encoder's own)."
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
        print(
            json.dumps(
                one(int(args.tools), args.paths, args.queries, int(args.batch_size) if args.batch_size else None)
            )
        )
        return
    results = []
    for tools in (int(t) for t in args.tools.split(",")):
        for path, batch in ((p, b) for p in args.paths.split(",") for b in args.batch_size.split(",")):
            console.print(f"[bold]{tools:,} tools[/], {path}, batch size {batch or 'default'}: a fresh process")
            command = [sys.executable, __file__, "--one", "--tools", str(tools), "--paths", path, "--batch-size", batch]
            # The build's log (the bulk child's progress) goes to this process's stderr as it comes.
            done = subprocess.run([*command, "--queries", str(args.queries)], stdout=subprocess.PIPE, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{tools} tools, {path}: exit status {done.returncode}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            report(results[-1:])
    report(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "cold_build.json"
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    console.print(f"wrote {out}")


def report(results: list[dict[str, Any]]) -> None:
    table = Table(title="Cold build through ToolIndex.update (served config), one fresh process per row")
    for column in (
        "tools",
        "path",
        "batch",
        "build s",
        "docs/s",
        "CPU s (self + child)",
        "RSS MB before / built / searched",
        "child peak RSS MB",
        "find_tool p50 / p95 ms",
        "torch here",
        "load avg",
    ):
        table.add_column(column, justify="right")
    for r in results:
        rss, cpu, ms = r["rss_mb"], r["cpu_s"], r["find_tool_ms"]
        child = r["child_peak_rss_mb"]
        table.add_row(
            f"{r['tools']:,}",
            r["path"],
            str(r.get("batch_size") or "default"),
            f"{r['build_s']:.1f}",
            f"{r['docs_per_s']:.0f}",
            f"{cpu['process']:.1f} + {cpu['children']:.1f}",
            f"{rss['before_build']:.0f} / {rss['after_build']:.0f} / {rss['after_searches']:.0f}",
            "" if child is None else f"{child:.0f}",
            f"{ms['p50']:.1f} / {ms['p95']:.1f}",
            "yes" if r["torch_imported"] else "no",
            f"{r['load_average'][0]:.1f} → {r['load_average'][1]:.1f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
