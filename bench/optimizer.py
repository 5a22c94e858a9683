"""Optimizer index at 1k / 10k / 100k tools: build, warm start, find_tool latency, memory, numpy baseline.

Catalogues are real tool documents from ../shared/eval-data (ToolRet subsets and ToolLens), repeated
with renamed tools and backends and lightly perturbed descriptions until they reach the size, so every
tool has its own document (and its own vector). Queries are real user requests from the same datasets.

    .venv/bin/python bench/optimizer.py                   # 1k, 10k, 100k (100k embeds for many minutes)
    .venv/bin/python bench/optimizer.py --sizes 1000,10000
    .venv/bin/python bench/optimizer.py --quick           # 1k and 10k, fewer queries

Prints a table, writes bench/results/optimizer.json and bench/results/optimizer-latency.png.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import psutil
import typer
from rich.console import Console
from rich.table import Table

from eval.late_interaction import LateInteraction, LateInteractionStage
from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import keyword_arm
from vmcp_opt.optimizer.cpu import cpu_supports_bfloat16
from vmcp_opt.optimizer.documents import ToolRecord, tool_document
from vmcp_opt.optimizer.embedding import Embedder, load_torch_embedder
from vmcp_opt.optimizer.index import ToolIndex
from vmcp_opt.optimizer.usage import UsageGraph

ROOT = Path(__file__).resolve().parent.parent
EVAL_DATA = ROOT.parent / "shared" / "eval-data"
RESULTS = ROOT / "bench" / "results"
console = Console()
app = typer.Typer(add_completion=False)

_FILLERS = ["quickly", "reliably", "via the API", "for the user", "on request", "in one call", "with paging"]
_LENS_FIELD = re.compile(r"(category_name|tool_name|api_name|api_description):(.*?)(?=, (?:\w+):|$)")


# -- catalogue ------------------------------------------------------------------------------------------


def base_tools() -> list[ToolRecord]:
    """Every tool in the eval data as a ToolRecord (about 6,900)."""
    records: list[ToolRecord] = []
    for subset in sorted((EVAL_DATA / "toolret_subsets").glob("*/tools.json")):
        backend = subset.parent.name
        for item in json.loads(subset.read_text(encoding="utf-8")):
            doc = item["documentation"]
            name = str(doc.get("name") or item["id"])
            description = str(doc.get("description") or doc.get("func_description") or "")
            records.append(ToolRecord(name, backend, description, _schema(doc.get("parameters"))))
    for line in (EVAL_DATA / "toollens" / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        fields = dict(_LENS_FIELD.findall(item["text"].split(", required_params:")[0]))
        backend = fields.get("tool_name", "toollens").strip()
        records.append(
            ToolRecord(fields.get("api_name", item["_id"]).strip(), backend, fields.get("api_description", "").strip())
        )
    return records


def _schema(parameters: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    if isinstance(parameters, dict):
        for name, spec in parameters.items():
            spec = spec if isinstance(spec, dict) else {}
            properties[str(name)] = {"type": "string", "description": str(spec.get("description", ""))}
    elif isinstance(parameters, list):
        for spec in parameters:
            if isinstance(spec, dict) and "name" in spec:
                properties[str(spec["name"])] = {"type": "string", "description": str(spec.get("description", ""))}
    return {"type": "object", "properties": properties}


def catalogue(size: int, base: list[ToolRecord]) -> list[ToolRecord]:
    """`size` distinct tools: copy k of a base tool gets backend `<backend>-k`, name suffix and a varied text."""
    rng = random.Random(size)
    out: list[ToolRecord] = []
    copy = 0
    while len(out) < size:
        for record in base:
            if len(out) == size:
                break
            if copy == 0:
                out.append(_routable(record, record.backend))
                continue
            words = record.description.split()
            if len(words) > 4:
                del words[rng.randrange(len(words))]
            words.insert(rng.randrange(len(words) + 1), rng.choice(_FILLERS))
            varied = ToolRecord(
                f"{record.name}_v{copy}", f"{record.backend}-{copy}", " ".join(words), record.input_schema
            )
            out.append(_routable(varied, varied.backend))
        copy += 1
    return out


def _routable(record: ToolRecord, backend: str) -> ToolRecord:
    return ToolRecord(
        f"{backend}_{record.name}", backend, record.description, record.input_schema, original_name=record.name
    )


def queries(count: int) -> list[str]:
    texts = [json.loads(line)["text"] for line in (EVAL_DATA / "toollens" / "queries.jsonl").open(encoding="utf-8")]
    for subset in sorted((EVAL_DATA / "toolret_subsets").glob("*/queries.json")):
        texts += [item["query"] for item in json.loads(subset.read_text(encoding="utf-8"))]
    random.Random(7).shuffle(texts)
    return texts[:count]


# -- measuring ------------------------------------------------------------------------------------------


def timed(fn: Callable[[str], Any], items: list[str]) -> list[float]:
    for item in items[:5]:
        fn(item)  # warm-up
    samples = []
    for item in items:
        started = time.perf_counter()
        fn(item)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q))


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss / 2**20)


def numpy_search(embedder: Embedder, vectors: np.ndarray, limit: int) -> Callable[[str], Any]:
    def search(query: str) -> Any:
        q = embedder.encode_queries([query])[0]
        sims = vectors @ q
        top = np.argpartition(-sims, limit)[:limit]
        return top[np.argsort(-sims[top])]

    return search


def throughput(embedder: Embedder, texts: list[str]) -> dict[str, float]:
    """Documents per second, fp32 against bfloat16 bulk encoding, on the same texts."""
    result = {}
    setting = embedder.bulk_bfloat16
    modes = [("fp32", False)] + ([("bf16", True)] if cpu_supports_bfloat16() else [])
    vectors = {}
    for label, bf16 in modes:
        embedder.bulk_bfloat16 = bf16
        embedder.encode_documents(texts[:32])  # warm-up (and the bf16 copy of the model)
        started = time.perf_counter()
        vectors[label] = embedder.encode_documents(texts)
        result[f"{label}_docs_per_s"] = len(texts) / (time.perf_counter() - started)
    embedder.bulk_bfloat16 = setting
    if "bf16" in vectors:
        result["bf16_min_cosine"] = float((vectors["fp32"] * vectors["bf16"]).sum(axis=1).min())
    return result


def synthetic_usage(records: list[ToolRecord], tasks: int = 20_000, seed: int = 5) -> UsageGraph:
    """A busy gateway's history: tasks of three tools drawn from small neighbourhoods of the catalogue, so
    each tool has a few dozen companions (ToolLens' real history has ~8 per tool)."""
    rng = random.Random(seed)
    graph = UsageGraph()
    names = [record.name for record in records]
    for _ in range(tasks):
        start = rng.randrange(len(names))
        graph.record_task(names[(start + rng.randrange(40)) % len(names)] for _ in range(3))
    return graph


def bench_size(
    size: int, base: list[ToolRecord], embedder: Embedder, query_texts: list[str], late_interaction: bool
) -> dict[str, Any]:
    records = catalogue(size, base)
    config = OptimizerConfig()
    with tempfile.TemporaryDirectory(prefix="vmcp-bench-") as tmp:
        cold = ToolIndex(config, Path(tmp), embedder)
        console.print(f"[bold]{size:,} tools[/]: cold build")
        cold_stats = cold.update(records, progress=True)
        del cold
        gc.collect()
        started = time.perf_counter()
        warm = ToolIndex(config, Path(tmp), embedder)
        warm_stats = warm.update(records)
        warm_seconds = time.perf_counter() - started
        disk = warm.stats()["size_on_disk_bytes"]
        assert warm_stats.embedded == 0, warm_stats
        index_ms = timed(lambda q: warm.search(q, limit=8), query_texts)
        repeat_ms = timed(lambda q: warm.search(q, limit=8), query_texts)  # the query embeddings now cached
        # The co-usage graph's cost, isolated: the same repeated (cached) queries with a usage history.
        warm.usage = synthetic_usage(records)
        usage_ms = timed(lambda q: warm.search(q, limit=8), query_texts)
        warm.usage = None
        single = ToolIndex(config.model_copy(update={"split_intents": False}), Path(tmp), embedder)
        single.update(records)
        single_ms = timed(lambda q: single.search(q, limit=8), query_texts)
        late_ms, token_store, late_build = [float("nan")], 0, float("nan")
        if late_interaction:
            # The vectors are reused from the warm cache; the token embeddings are computed again for every tool.
            late = ToolIndex(config, Path(tmp), embedder, reranker=LateInteraction(embedder))
            late_build = late.update(records).seconds
            late_ms = timed(lambda q: late.search(q, limit=8), query_texts)
            assert isinstance(late._snapshot.rerank, LateInteractionStage)
            token_store = late._snapshot.rerank.tokens.nbytes
            del late
        embed_ms = timed(lambda q: embedder.encode_queries([q]), query_texts)
        snap = warm._snapshot
        assert snap.vectors is not None
        vectors = np.array(snap.vectors)  # the baseline gets its own plain copy
        qv = embedder.encode_queries(query_texts)
        faiss_only = _per_row(lambda i: snap.faiss_index.search(qv[i : i + 1], config.candidates), len(qv))
        with _one_blas_thread():  # as FAISS: one thread, or OpenBLAS spins against torch on 2 cores
            numpy_ms = timed(numpy_search(embedder, vectors, 8), query_texts)
            matmul_only = _per_row(lambda i: np.argpartition(-(vectors @ qv[i]), config.candidates)[:100], len(qv))
        keyword_only = timed(lambda q: keyword_arm.candidates(snap.bm25, q, config.candidates, None), query_texts)
        result = {
            "tools": size,
            "cold_build_s": cold_stats.seconds,
            "embedded": cold_stats.embedded,
            "cold_docs_per_s": cold_stats.embedded / cold_stats.seconds,
            "warm_start_s": warm_seconds,
            "find_tool_p50_ms": p(index_ms, 50),
            "find_tool_p95_ms": p(index_ms, 95),
            "find_tool_one_query_p50_ms": p(single_ms, 50),
            "find_tool_repeated_p50_ms": p(repeat_ms, 50),
            "find_tool_repeated_usage_p50_ms": p(usage_ms, 50),
            "find_tool_late_interaction_p50_ms": p(late_ms, 50),
            "late_interaction_build_s": late_build,
            "token_store_mb": token_store / 2**20,
            "numpy_p50_ms": p(numpy_ms, 50),
            "numpy_p95_ms": p(numpy_ms, 95),
            "ratio_p50": p(index_ms, 50) / p(numpy_ms, 50),
            "query_embedding_p50_ms": p(embed_ms, 50),
            "faiss_search_p50_ms": p(faiss_only, 50),
            "numpy_matmul_p50_ms": p(matmul_only, 50),
            "bm25_p50_ms": p(keyword_only, 50),
            "rss_mb": rss_mb(),
            "disk_mb": disk / 2**20,
            "samples": {"find_tool": index_ms, "numpy": numpy_ms},
        }
    return result


def _one_blas_thread() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _per_row(fn: Callable[[int], Any], count: int) -> list[float]:
    for i in range(min(5, count)):
        fn(i)
    samples = []
    for i in range(count):
        started = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


# -- reporting ------------------------------------------------------------------------------------------


def report(results: list[dict[str, Any]], encode: dict[str, float], model_load_s: float) -> None:
    table = Table(title="optimizer index (in process, one query at a time, limit 8; times include query embedding)")
    rows = [
        ("cold build, s", "cold_build_s", "{:.1f}"),
        ("  docs embedded per s", "cold_docs_per_s", "{:.0f}"),
        ("warm start (reload + keyword index), s", "warm_start_s", "{:.2f}"),
        ("find_tool p50, ms", "find_tool_p50_ms", "{:.2f}"),
        ("find_tool p95, ms", "find_tool_p95_ms", "{:.2f}"),
        ("find_tool p50, intent splitting off, ms", "find_tool_one_query_p50_ms", "{:.2f}"),
        ("find_tool p50, repeated query (embedding cached), ms", "find_tool_repeated_p50_ms", "{:.2f}"),
        ("  the same with a usage history (20k tasks of 3 tools), ms", "find_tool_repeated_usage_p50_ms", "{:.2f}"),
        ("find_tool p50, late interaction on, ms", "find_tool_late_interaction_p50_ms", "{:.2f}"),
        ("  cold build with token embeddings, s", "late_interaction_build_s", "{:.1f}"),
        ("numpy brute force p50, ms", "numpy_p50_ms", "{:.2f}"),
        ("numpy brute force p95, ms", "numpy_p95_ms", "{:.2f}"),
        ("find_tool / numpy, p50", "ratio_p50", "{:.2f}x"),
        ("  query embedding p50, ms", "query_embedding_p50_ms", "{:.2f}"),
        ("  FAISS top-100 p50, ms", "faiss_search_p50_ms", "{:.3f}"),
        ("  numpy top-100 p50, ms", "numpy_matmul_p50_ms", "{:.3f}"),
        ("  bm25 top-100 p50, ms", "bm25_p50_ms", "{:.3f}"),
        ("RSS, MB", "rss_mb", "{:.0f}"),
        ("  token store (late interaction), MB", "token_store_mb", "{:.0f}"),
        ("index on disk, MB", "disk_mb", "{:.1f}"),
    ]
    table.add_column("metric")
    for row in results:
        table.add_column(f"{row['tools']:,} tools", justify="right")
    for label, key, fmt in rows:
        table.add_row(label, *(fmt.format(row[key]) for row in results))
    console.print(table)
    console.print(
        f"model load {model_load_s:.1f} s; bulk encoding: " + ", ".join(f"{k} {v:.3f}" for k, v in encode.items())
    )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = [r["tools"] for r in results]
    for key, label in (("find_tool", "ToolIndex.search (hybrid)"), ("numpy", "numpy brute force (dense only)")):
        p50 = [p(r["samples"][key], 50) for r in results]
        p95 = [p(r["samples"][key], 95) for r in results]
        ax.plot(sizes, p50, marker="o", label=f"{label} p50")
        ax.plot(sizes, p95, marker="x", linestyle="--", label=f"{label} p95")
    ax.axhline(8, color="grey", linewidth=0.8, linestyle=":", label="goal at 10k: 8 ms")
    ax.set_xscale("log")
    ax.set_xlabel("tools in catalogue")
    ax.set_ylabel("ms per query (embedding included)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


@app.command()
def main(
    sizes: str = typer.Option("1000,10000,100000", help="Comma-separated catalogue sizes."),
    quick: bool = typer.Option(False, help="1k and 10k, 100 queries, a smaller throughput sample."),
    query_count: int = typer.Option(300, "--queries", help="Queries timed per size."),
    query_threads: int = typer.Option(OptimizerConfig().query_threads, help="torch threads per query embedding."),
    late_interaction_up_to: int = typer.Option(
        10000, help="Also time eval/late_interaction.py's re-ranking (token embeddings for all) up to this many tools."
    ),
) -> None:
    size_list = [1000, 10000] if quick else [int(s) for s in sizes.split(",") if s.strip()]
    query_count = 100 if quick else query_count
    base = base_tools()
    query_texts = queries(query_count)
    console.print(f"{len(base):,} distinct tools in the eval data; {len(query_texts)} queries; sizes {size_list}")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    embedder = load_torch_embedder("all-MiniLM-L6-v2", query_threads=query_threads)
    model_load_s = time.perf_counter() - started
    sample = [tool_document(r) for r in random.Random(3).sample(base, 256 if quick else 512)]
    with console.status("bulk encoding throughput, fp32 vs bf16"):
        encode = throughput(embedder, sample)
    results = [bench_size(size, base, embedder, query_texts, size <= late_interaction_up_to) for size in size_list]
    report(results, encode, model_load_s)
    load = (load_before, os.getloadavg()[0])
    console.print(f"load average (1 min) before/after: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores")
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {
        "model_load_s": model_load_s,
        "encoding": encode,
        "cpu_count": os.cpu_count(),
        "query_threads": query_threads,
        "load_average": load,
        "results": [{k: v for k, v in r.items() if k != "samples"} for r in results],
    }
    (RESULTS / "optimizer.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    plot(results, RESULTS / "optimizer-latency.png")
    console.print(f"wrote {RESULTS / 'optimizer.json'} and {RESULTS / 'optimizer-latency.png'}")


if __name__ == "__main__":
    app()
