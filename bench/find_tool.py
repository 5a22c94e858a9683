"""find_tool's embedding path per encoder, in one run: query latency, bulk rate and cold index build.

    PYTHONPATH=. .venv/bin/python bench/find_tool.py                  # 10k tools, 300 queries
    PYTHONPATH=. .venv/bin/python bench/find_tool.py --tools 100000 --build onnx

Encoders (`optimizer.encoder` and `optimizer.precision`, and the int8 graph eval keeps to compare):
- torch: the lean encoder (optimizer/encoder.py), bfloat16 queries and bulk where the CPU has AMX /
  AVX-512 BF16, batches by token count;
- onnx: ONNX Runtime over the fp32 export with ORT's transformer fusions (optimizer/onnx_encoder.py);
- onnx-int8 (served): the same graph, SmoothQuant then dynamic int8 on QKV, the attention output and the
  first feed-forward MatMul, and the second feed-forward MatMul in int8 with one activation scale per token
  (optimizer/onnx_quantise.py);
- onnx-int8-blockwise: the same graph with 8-bit block-wise MatMul weights (the previous served int8);
- onnx-int8-dynamic: the same graph with int8 dynamic quantisation of every op (per-channel weights).

Searches run on one index with the query cache off, the encoders (and "onnx-int8, intent mean": the
served encoder with `optimizer.whole_request_vector: intent_mean`) alternating query by query (so load on a
shared machine hits all alike); the query embedding alone is timed the same way, plus onnx at 2 intra-op
threads. Bulk rates are measured on a sample (`--sample`), ONNX at 1 and 2 bulk threads; the cold build
runs the whole catalogue through each encoder named by `--build`. Catalogue and queries are those of
bench/optimizer.py. Prints a table; writes bench/results/find_tool.json and find_tool-latency.png.
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
from vmcp_opt.optimizer.embedding import TextEmbedder, default_model_cache, load_embedder  # noqa: E402
from vmcp_opt.optimizer.index import ToolIndex  # noqa: E402
from vmcp_opt.optimizer.model_registry import resolve_model  # noqa: E402
from vmcp_opt.optimizer.onnx_encoder import load_onnx_embedder  # noqa: E402
from vmcp_opt.optimizer.onnx_export import Precision  # noqa: E402

RESULTS = ROOT / "bench" / "results"
console = Console(width=max(Console().width, 110))  # the table needs ~105 columns, even in a pipe


ENCODERS: dict[str, Precision | None] = {
    "torch": None,
    "onnx": "fp32",
    "onnx-int8": "int8",
    "onnx-int8-blockwise": "int8-blockwise",
    "onnx-int8-dynamic": "int8-dynamic",
}


INTENT_MEAN = "onnx-int8, intent mean"


def load(encoder: str, query_threads: int, bulk_threads: int) -> TextEmbedder:
    precision = ENCODERS[encoder]
    if precision is None:
        return load_embedder("all-MiniLM-L6-v2", encoder="torch", progress=False, query_threads=query_threads)
    spec = resolve_model("all-MiniLM-L6-v2")
    return load_onnx_embedder(
        spec, default_model_cache(), precision=precision, query_threads=query_threads, bulk_threads=bulk_threads
    )


def docs_per_second(embedder: TextEmbedder, documents: list[str]) -> float:
    started = time.perf_counter()
    embedder.encode_documents(documents)
    return len(documents) / (time.perf_counter() - started)


def interleaved(
    index: ToolIndex, paths: dict[str, tuple[TextEmbedder, OptimizerConfig]], texts: list[str]
) -> dict[str, list[float]]:
    """Search latency per path (an encoder and the search's settings), alternating which goes first for each
    query."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for text in texts[:5]:
        for name in names:
            index.embedder, index.config = paths[name]
            index.search(text)
    for i, text in enumerate(texts):
        for name in names if i % 2 == 0 else names[::-1]:
            index.embedder, index.config = paths[name]
            started = time.perf_counter()
            index.search(text, limit=8)
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def encoder_only(paths: dict[str, TextEmbedder], texts: list[str]) -> dict[str, list[float]]:
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
    parser.add_argument("--sample", type=int, default=1000, help="Documents each bulk rate is timed on.")
    parser.add_argument("--build", default="torch,onnx", help="Encoders that build the whole catalogue cold.")
    parser.add_argument("--query-threads", type=int, default=OptimizerConfig().query_threads)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    paths = {name: load(name, args.query_threads, 1) for name in ENCODERS}
    two_threads = {"onnx 2 threads": load("onnx", 2, 2)}
    records = catalogue(args.tools, base_tools())
    documents = [tool_document(r) for r in records]
    sample = random.Random(3).sample(documents, min(args.sample, len(documents)))
    rates = {name: docs_per_second(embedder, sample) for name, embedder in paths.items()}
    rates["onnx 2 threads"] = docs_per_second(two_threads["onnx 2 threads"], sample)
    config = OptimizerConfig(query_cache_size=0)
    builds: dict[str, float] = {}
    index: ToolIndex | None = None
    with tempfile.TemporaryDirectory(prefix="vmcp-bench-") as tmp:
        for name in args.build.split(","):
            console.print(f"[bold]{args.tools:,} tools[/]: cold build ({name})")
            embedder = two_threads["onnx 2 threads"] if name == "onnx" else paths[name]
            index = ToolIndex(config, Path(tmp) / name, embedder)
            builds[name] = index.update(records, progress=True).seconds
        assert index is not None
        rss_built = rss_mb()
        texts = queries(args.queries)
        searches = {name: (embedder, config) for name, embedder in paths.items()}
        # The served encoder with a multi-intent request's own vector averaged from its intents' (not embedded).
        searches[INTENT_MEAN] = (paths["onnx-int8"], config.model_copy(update={"whole_request_vector": "intent_mean"}))
        search = interleaved(index, searches, texts)
        encode = encoder_only({**paths, **two_threads}, texts)
        rss_after = rss_mb()
    result: dict[str, Any] = {
        "tools": args.tools,
        "queries": len(texts),
        "query_threads": args.query_threads,
        "cold_build_s": builds,
        "bulk_docs_per_s": rates,
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
        title=f"ToolIndex.search at {args.tools:,} tools, per encoder",
    )
    console.print(f"wrote {RESULTS / f'find_tool{suffix}.json'} and {plot}")


def report(result: dict[str, Any]) -> None:
    """One row per path (an encoder, or the served one with a search setting), so the table stays narrow."""
    table = Table(title=f"find_tool at {result['tools']:,} tools, {result['queries']} queries (same run)")
    for column in (
        "path",
        "find_tool p50 / p95 ms",
        "p95/p50",
        "embedding p50 / p95 ms",
        "bulk docs/s",
        "cold build s",
    ):
        table.add_column(column, justify="left" if column == "path" else "right")
    searches, encodes = result["find_tool_ms"], result["encode_ms"]
    for name in dict.fromkeys([*searches, *encodes]):
        search, encode = searches.get(name), encodes.get(name)
        rate, build = result["bulk_docs_per_s"].get(name), result["cold_build_s"].get(name)
        table.add_row(
            name,
            f"{search['p50']:.2f} / {search['p95']:.2f}" if search else "",
            f"{search['p95'] / search['p50']:.2f}" if search else "",
            f"{encode['p50']:.2f} / {encode['p95']:.2f}" if encode else "",
            f"{rate:.0f}" if rate is not None else "",
            f"{build:.1f}" if build is not None else "",
        )
    console.print(table)
    console.print(
        f"RSS {result['rss_mb']['after_searches']:.0f} MB (all encoders loaded); load average "
        f"{result['load_average'][0]:.1f} -> {result['load_average'][1]:.1f} on {result['cpu_count']} cores"
    )


if __name__ == "__main__":
    main()
