"""find_tool's embedding path, old against new in one run: cold index build and search latency.

    PYTHONPATH=. .venv/bin/python bench/find_tool.py                  # 10k tools, 300 queries
    PYTHONPATH=. .venv/bin/python bench/find_tool.py --tools 100000 --old-sample 500

Both paths share one loaded model:
- old: sentence-transformers (`encode`-style `preprocess` + module forward), float32 queries, bulk through a
  bfloat16 copy of the whole model, batches of 64 texts by character length;
- new: the lean encoder (optimizer/encoder.py), bfloat16 queries where the CPU has AMX / AVX-512 BF16,
  bulk batched by token count through the same bfloat16 layers.

The cold build runs the new path over the whole catalogue; the old path's bulk rate is measured on a
sample of the same documents (`--old-sample`), both rates printed. Searches run on one index with the
query cache off, the two embedders alternating query by query (so load on a shared machine hits both
alike). Catalogue and queries are those of bench/optimizer.py. Prints a table; writes
bench/results/find_tool.json and bench/results/find_tool-latency.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
from bench.plots import latency_histogram  # noqa: E402
from vmcp_opt.config import OptimizerConfig  # noqa: E402
from vmcp_opt.optimizer.documents import tool_document  # noqa: E402
from vmcp_opt.optimizer.embedding import Embedder, load_embedder  # noqa: E402
from vmcp_opt.optimizer.index import ToolIndex  # noqa: E402

RESULTS = ROOT / "bench" / "results"
console = Console()


def old_embedder(new: Embedder) -> Embedder:
    """The path before the lean encoder, on the same loaded model."""
    return Embedder(
        new.spec,
        new._model,
        bulk_bfloat16=new.bulk_bfloat16,
        batch_size=new.batch_size,
        query_threads=new.query_threads,
        bulk_threads=new.bulk_threads,
        lean=False,
        query_bfloat16=False,
    )


def docs_per_second(embedder: Embedder, documents: list[str]) -> float:
    started = time.perf_counter()
    embedder.encode_documents(documents)
    return len(documents) / (time.perf_counter() - started)


def interleaved(index: ToolIndex, paths: dict[str, Embedder], texts: list[str]) -> dict[str, list[float]]:
    """Search latency per path, alternating which goes first for each query."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for text in texts[:5]:
        for name in names:
            index.embedder = paths[name]
            index.search(text)
    for i, text in enumerate(texts):
        for name in names if i % 2 == 0 else names[::-1]:
            index.embedder = paths[name]
            started = time.perf_counter()
            index.search(text, limit=8)
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def encoder_only(paths: dict[str, Embedder], texts: list[str]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for i, text in enumerate(texts):
        for name in list(paths) if i % 2 == 0 else list(paths)[::-1]:
            started = time.perf_counter()
            paths[name].encode_queries([text])
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--old-sample", type=int, default=1000, help="Documents the old bulk path is timed on.")
    parser.add_argument("--query-threads", type=int, default=OptimizerConfig().query_threads)
    parser.add_argument("--bulk-threads", type=int, default=OptimizerConfig().bulk_threads)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    new = load_embedder(
        "all-MiniLM-L6-v2", progress=False, query_threads=args.query_threads, bulk_threads=args.bulk_threads
    )
    old = old_embedder(new)
    paths = {"old": old, "new": new}
    records = catalogue(args.tools, base_tools())
    documents = [tool_document(r) for r in records]
    sample = random.Random(3).sample(documents, min(args.old_sample, len(documents)))
    rates = {name: docs_per_second(embedder, sample) for name, embedder in (("old", old), ("new", new))}
    config = OptimizerConfig(query_cache_size=0)
    with tempfile.TemporaryDirectory(prefix="vmcp-bench-") as tmp:
        console.print(f"[bold]{args.tools:,} tools[/]: cold build (new path)")
        index = ToolIndex(config, Path(tmp), new)
        stats = index.update(records, progress=True)
        rss_built = rss_mb()
        texts = queries(args.queries)
        search = interleaved(index, paths, texts)
        encode = encoder_only(paths, texts)
        rss_after = rss_mb()
    result: dict[str, Any] = {
        "tools": args.tools,
        "queries": len(texts),
        "query_threads": args.query_threads,
        "bulk_threads": args.bulk_threads or os.cpu_count(),
        "query_bfloat16": new.query_bfloat16,
        "cold_build_s": stats.seconds,
        "cold_docs_per_s": stats.embedded / stats.seconds,
        "bulk_docs_per_s": rates,
        "old_cold_build_estimate_s": args.tools / rates["old"],
        "find_tool_ms": {name: {"p50": pct(s, 50), "p95": pct(s, 95)} for name, s in search.items()},
        "encode_ms": {name: {"p50": pct(s, 50), "p95": pct(s, 95)} for name, s in encode.items()},
        "rss_mb": {"after_build": rss_built, "after_searches": rss_after},
        "load_average": [load_before, os.getloadavg()[0]],
        "cpu_count": os.cpu_count(),
    }
    report(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.tools == 10000 else f"-{args.tools}"
    (RESULTS / f"find_tool{suffix}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    plot = latency_histogram(
        {f"{name} (p50 {pct(s, 50):.1f} ms)": s for name, s in search.items()},
        RESULTS / f"find_tool-latency{suffix}.png",
        xlabel="ms per find_tool search (in process, query embedding included)",
        ylabel="queries",
        title=f"ToolIndex.search at {args.tools:,} tools: old vs lean encoder",
    )
    console.print(f"wrote {RESULTS / f'find_tool{suffix}.json'} and {plot}")


def report(result: dict[str, Any]) -> None:
    search, encode, rates = result["find_tool_ms"], result["encode_ms"], result["bulk_docs_per_s"]
    table = Table(title=f"find_tool at {result['tools']:,} tools, {result['queries']} queries (same run)")
    for column in ("metric", "old", "new", "old / new"):
        table.add_column(column, justify="left" if column == "metric" else "right")

    def row(label: str, a: float, b: float, fmt: str = "{:.2f}") -> None:
        table.add_row(label, fmt.format(a), fmt.format(b), f"{a / b:.2f}x")

    row("find_tool p50, ms", search["old"]["p50"], search["new"]["p50"])
    row("find_tool p95, ms", search["old"]["p95"], search["new"]["p95"])
    row("query embedding p50, ms", encode["old"]["p50"], encode["new"]["p50"])
    row("query embedding p95, ms", encode["old"]["p95"], encode["new"]["p95"])
    row("bulk docs per s (sample)", rates["old"], rates["new"], "{:.0f}")
    row("cold build, s (old: estimated from its rate)", result["old_cold_build_estimate_s"], result["cold_build_s"])
    console.print(table)
    console.print(
        f"new p95 / p50 {search['new']['p95'] / search['new']['p50']:.2f}; RSS {result['rss_mb']['after_searches']:.0f} MB;"
        f" query bfloat16 {result['query_bfloat16']}; load average {result['load_average'][0]:.1f} -> "
        f"{result['load_average'][1]:.1f} on {result['cpu_count']} cores"
    )


if __name__ == "__main__":
    main()
