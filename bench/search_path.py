"""find_tool's search without the query embedding: `ToolIndex.search` with every query vector cached.

    PYTHONPATH=. .venv/bin/python bench/search_path.py                 # 10k tools, 300 queries
    PYTHONPATH=. .venv/bin/python bench/search_path.py --tools 1000 --queries 1000

Catalogue and queries are those of bench/optimizer.py (multi-intent requests run 1 + up to 4 variants).
Each query's variants are embedded once before timing (the query cache holds them all), so what is timed
is everything else: query variants, both arms, fusion, merge, boosts, similarities. The search as it was
before this bench (`legacy_search`, kept here beside the new one) and `ToolIndex.search` alternate query by
query, with and without a caller's `names` filter (every other tool); CPU time of the calling thread
(`time.thread_time`) is the figure, wall time is printed beside it.

A second pass times each stage of `ToolIndex.search` (by wrapping the functions it calls) and names the
queries in the tail. The index (vectors by content hash) is kept in `--index-dir`, so only the first run
embeds the catalogue. Writes bench/results/search_path.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import bm25s
import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.optimizer import base_tools, catalogue, queries  # noqa: E402
from vmcp_opt.config import OptimizerConfig  # noqa: E402
from vmcp_opt.optimizer import boosts, keyword_arm, ranking, vector_arm  # noqa: E402
from vmcp_opt.optimizer import index as index_module  # noqa: E402
from vmcp_opt.optimizer.embedding import load_configured_embedder  # noqa: E402
from vmcp_opt.optimizer.index import SearchHit, SearchResult, ToolIndex  # noqa: E402
from vmcp_opt.optimizer.query_cache import QueryCache  # noqa: E402

RESULTS = ROOT / "bench" / "results"
console = Console()


# -- the search as it was at 53bee71 (kept to compare against, in one process) -----------------------------


def legacy_search(
    index: ToolIndex,
    query: str,
    limit: int = 8,
    backends: Collection[str] | None = None,
    names: frozenset[str] | None = None,
) -> SearchResult:
    """`ToolIndex.search` before the search path was reworked: bm25s tokenization and scoring per variant,
    FAISS for every vector search, full sorts for the boosts' seeds and the results. Fusion, merge and the
    boosts' arithmetic are shared with the new path."""
    saved, ranking.head = ranking.head, _legacy_head
    try:
        return _legacy_search(index, query, limit, backends, names)
    finally:
        ranking.head = saved


def _legacy_head(ranking_: ranking.Ranking, count: int) -> list[int]:
    return ranking.order(ranking_)[:count]


def _legacy_search(
    index: ToolIndex,
    query: str,
    limit: int,
    backends: Collection[str] | None,
    names: frozenset[str] | None,
) -> SearchResult:
    snap = index._snapshot
    embedder = index.embedder
    dense = snap.vectors is not None and embedder is not None
    mode: Literal["hybrid", "keyword"] = "hybrid" if dense else "keyword"
    if not snap.records or not query.strip() or limit < 1:
        return SearchResult([], mode)
    allowed = index_module._backend_mask(snap, backends)
    if names is not None:
        named = index._name_mask(snap, names)
        allowed = named if allowed is None else allowed & named
    if allowed is not None and not allowed.any():
        return SearchResult([], mode)
    config = index.config
    variants = ranking.query_variants(query, config)
    query_vectors = None
    depth = min(config.candidates, len(snap.records))
    sparse = [_legacy_keyword(snap.bm25, variant, depth, allowed) for variant in variants]
    if dense and embedder is not None:
        assert snap.has_vector is not None
        query_vectors = index._queries.encode(embedder, variants)
        vectors = _legacy_vector(snap.faiss_index, snap.has_vector, query_vectors, depth, allowed, config)
        fused = [ranking.fuse(d, s, config) for d, s in zip(vectors, sparse, strict=True)]
    else:
        fused = [ranking.keyword_only(s) for s in sparse]
    merged = ranking.merge_variants(fused)
    scored = merged
    used_with: dict[int, str] = {}
    if config.usage and index.usage is not None and config.usage_weight > 0 and len(index.usage):
        scored, used_with = boosts.with_companions(merged, snap.records, snap.positions, index.usage, config, allowed)
    supplies: dict[int, tuple[str, str]] = {}
    if config.prerequisite_weight > 0 and snap.prerequisites:
        scored, supplies = boosts.with_prerequisites(merged, scored, snap.records, snap.prerequisites, config, allowed)
    best = [(doc, scored[doc]) for doc in ranking.order(scored)[:limit]]
    similarity = index_module._similarities(snap, query_vectors, [doc for doc, _ in best])
    return SearchResult(
        [
            SearchHit(snap.records[doc], float(score), used_with.get(doc), supplies.get(doc), similarity.get(doc))
            for doc, score in best
        ],
        mode,
    )


def _legacy_keyword(bm25: Any, query: str, depth: int, allowed: np.ndarray | None) -> ranking.Ranking:
    tokens = bm25s.tokenize(
        [ranking.keyword_query(query)],
        stopwords="en",
        stemmer=keyword_arm._stem,
        return_ids=False,
        show_progress=False,
    )[0]
    ids = bm25.get_tokens_ids(tokens)
    if not ids:
        return {}
    scores = bm25.get_scores_from_ids(ids)
    if allowed is not None:
        scores = np.where(allowed, scores, 0.0)
    depth = min(depth, len(scores))
    part = np.argpartition(-scores, depth - 1)[:depth]
    return {int(i): float(scores[i]) for i in part if scores[i] > 0}


def _legacy_vector(
    index: Any,
    has_vector: np.ndarray,
    queries: np.ndarray,
    depth: int,
    allowed: np.ndarray | None,
    config: OptimizerConfig,
) -> list[ranking.Ranking]:
    if allowed is None:
        scores, ids = index.search(queries, depth)
        return [
            {int(i): float(s) for s, i in zip(row_s, row_i, strict=True) if i >= 0 and has_vector[i]}
            for row_s, row_i in zip(scores, ids, strict=True)
        ]
    selector = faiss.IDSelectorBatch(np.flatnonzero(has_vector & allowed).astype(np.int64))
    params: Any = (
        faiss.SearchParametersHNSW(sel=selector, efSearch=max(128, depth))  # type: ignore[attr-defined]
        if config.index_type == "hnsw"
        else faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
    )
    scores, ids = index.search(queries, depth, params=params)
    return [
        {int(i): float(s) for s, i in zip(row_s, row_i, strict=True) if i >= 0}
        for row_s, row_i in zip(scores, ids, strict=True)
    ]


# -- measuring -------------------------------------------------------------------------------------------

Search = Callable[[str], SearchResult]


def interleaved(paths: dict[str, Search], texts: list[str]) -> dict[str, dict[str, list[float]]]:
    """CPU and wall milliseconds per search, per path, alternating which path goes first each query."""
    samples: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in paths}
    names = list(paths)
    for i, text in enumerate(texts):
        for name in names if i % 2 == 0 else names[::-1]:
            cpu, wall = time.thread_time(), time.perf_counter()
            paths[name](text)
            samples[name]["cpu"].append((time.thread_time() - cpu) * 1000)
            samples[name]["wall"].append((time.perf_counter() - wall) * 1000)
    return samples


class StageTimer:
    """CPU milliseconds spent in each wrapped function during the current query."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[stage] += (time.thread_time() - started) * 1000

        return timed


# (module, attribute, stage): what `ToolIndex.search` calls, as it looks them up at call time.
STAGES: tuple[tuple[Any, str, str], ...] = (
    (ranking, "query_variants", "query variants"),
    (keyword_arm, "query_tokens", "keyword: tokenize + stem"),
    (keyword_arm, "_scores", "keyword: BM25 scores"),
    (keyword_arm, "_top_positive", "keyword: top positive"),
    (keyword_arm, "candidates", "keyword arm (all)"),
    (index_module.ToolIndex, "_name_mask", "allowed mask"),
    (QueryCache, "encode", "query cache lookup"),
    (vector_arm, "inner_products", "vector: inner products"),
    (vector_arm, "candidates", "vector arm (all)"),
    (ranking, "fuse", "fusion"),
    (ranking, "merge_variants", "merge variants"),
    (index_module, "with_companions", "boost: companions"),
    (index_module, "with_prerequisites", "boost: prerequisites"),
    (ranking, "top", "top"),
    (index_module, "_similarities", "similarities"),
)


@contextmanager
def stages_wrapped(timer: StageTimer) -> Iterator[None]:
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in STAGES]
    for owner, name, stage in STAGES:
        setattr(owner, name, timer.wrap(stage, getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def breakdown(index: ToolIndex, texts: list[str]) -> tuple[list[dict[str, float]], list[float]]:
    """Per query: CPU ms per stage, and the whole search's CPU ms (under the wrappers' own cost)."""
    timer = StageTimer()
    per_query: list[dict[str, float]] = []
    totals: list[float] = []
    with stages_wrapped(timer):
        for text in texts:
            timer.current = defaultdict(float)
            started = time.thread_time()
            index.search(text)
            totals.append((time.thread_time() - started) * 1000)
            per_query.append(dict(timer.current))
    return per_query, totals


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) if samples else 0.0


def gc_pauses() -> tuple[list[float], Callable[[], None]]:
    """Milliseconds of every garbage collection from now until the returned function is called."""
    pauses: list[float] = []
    started: list[float] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append((time.perf_counter() - started.pop()) * 1000)

    gc.callbacks.append(callback)
    return pauses, lambda: gc.callbacks.remove(callback)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="Passes over the queries (each interleaved).")
    parser.add_argument("--index-dir", type=Path, default=RESULTS / "search-path-index")
    args = parser.parse_args()

    load_before = os.getloadavg()
    config = OptimizerConfig(query_cache_size=1_000_000)  # the gateway's default keeps 1,024
    embedder = load_configured_embedder(config)
    index = ToolIndex(config, args.index_dir / str(args.tools), embedder)
    console.print(f"[bold]{args.tools:,} tools[/]: index (vectors reused from {index.directory} when there)")
    index.update(catalogue(args.tools, base_tools()), progress=True)
    texts = queries(args.queries)
    variants = {text: len(ranking.query_variants(text, config)) for text in texts}
    for text in texts:  # every variant's vector into the query cache: embedding is not timed
        index.search(text)
    cached = index._queries._vectors
    assert all(v in cached for text in texts for v in ranking.query_variants(text, config)), "a variant not cached"
    # A caller whose policy allows every other tool: its `names` filter before ranking.
    names = frozenset(record.name for record in index._snapshot.records[::2])
    paths: dict[str, Search] = {
        "before": lambda q: legacy_search(index, q),
        "after": index.search,
        "before, names": lambda q: legacy_search(index, q, names=names),
        "after, names": lambda q: index.search(q, names=names),
    }
    pauses, stop = gc_pauses()
    runs: dict[str, dict[str, list[float]]] = {name: {"cpu": [], "wall": []} for name in paths}
    for _ in range(args.rounds):
        for name, got in interleaved(paths, texts).items():
            for kind in ("cpu", "wall"):
                runs[name][kind] += got[kind]
    stop()
    per_query, totals = breakdown(index, texts)
    result = summarise(args, texts, variants, runs, per_query, totals, pauses, load_before)
    report(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.tools == 10000 else f"-{args.tools}"
    out = RESULTS / f"search_path{suffix}.json"
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    console.print(f"wrote {out}")


def summarise(
    args: argparse.Namespace,
    texts: list[str],
    variants: dict[str, int],
    runs: dict[str, dict[str, list[float]]],
    per_query: list[dict[str, float]],
    totals: list[float],
    pauses: list[float],
    load_before: tuple[float, float, float],
) -> dict[str, Any]:
    after = runs["after"]["cpu"]
    by_count: dict[int, list[float]] = defaultdict(list)
    for i, ms in enumerate(after):
        by_count[variants[texts[i % len(texts)]]].append(ms)
    stage_names = sorted({stage for q in per_query for stage in q})
    tail_cut = pct(totals, 95)
    tail = [
        {"query": texts[i][:90], "variants": variants[texts[i]], "ms": round(totals[i], 3)}
        for i in np.argsort(totals)[::-1]
        if totals[i] >= tail_cut
    ]
    return {
        "tools": args.tools,
        "queries": len(texts),
        "rounds": args.rounds,
        "search_ms": {
            name: {kind: {"p50": pct(s, 50), "p95": pct(s, 95), "p99": pct(s, 99)} for kind, s in got.items()}
            for name, got in runs.items()
        },
        "ratio_p50": pct(runs["after"]["cpu"], 50) / pct(runs["before"]["cpu"], 50),
        "ratio_p95": pct(runs["after"]["cpu"], 95) / pct(runs["before"]["cpu"], 95),
        "after_by_variants": {
            str(k): {"queries": len(v) // args.rounds, "p50": pct(v, 50), "p95": pct(v, 95)}
            for k, v in sorted(by_count.items())
        },
        "stages_ms": {
            stage: {
                "p50": pct([q.get(stage, 0.0) for q in per_query], 50),
                "p95": pct([q.get(stage, 0.0) for q in per_query], 95),
                "mean": float(np.mean([q.get(stage, 0.0) for q in per_query])),
            }
            for stage in stage_names
        },
        "stages_total_ms": {"p50": pct(totals, 50), "p95": pct(totals, 95)},
        "tail": tail,
        "gc_pauses_ms": {"count": len(pauses), "max": max(pauses, default=0.0), "sum": float(sum(pauses))},
        "load_average": [list(load_before), list(os.getloadavg())],
        "cpu_count": os.cpu_count(),
    }


def report(result: dict[str, Any]) -> None:
    table = Table(title=f"search without the embedding, {result['tools']:,} tools, {result['queries']} queries")
    table.add_column("path")
    for column in ("CPU p50", "CPU p95", "CPU p99", "wall p50", "wall p95"):
        table.add_column(f"{column}, ms", justify="right")
    for name, got in result["search_ms"].items():
        cpu, wall = got["cpu"], got["wall"]
        table.add_row(name, *(f"{v:.3f}" for v in (cpu["p50"], cpu["p95"], cpu["p99"], wall["p50"], wall["p95"])))
    console.print(table)
    console.print(f"after/before CPU: p50 x{result['ratio_p50']:.2f}, p95 x{result['ratio_p95']:.2f}")
    by = Table(title="after, by query variants (1 = one intent)")
    for column in ("variants", "queries", "CPU p50, ms", "CPU p95, ms"):
        by.add_column(column, justify="right")
    for count, got in result["after_by_variants"].items():
        by.add_row(count, str(got["queries"]), f"{got['p50']:.3f}", f"{got['p95']:.3f}")
    console.print(by)
    stages = Table(title="after, per stage (CPU ms per query; nested stages are inside their arm)")
    for column in ("stage", "p50", "p95", "mean"):
        stages.add_column(column, justify="right" if column != "stage" else "left")
    for stage, got in sorted(result["stages_ms"].items(), key=lambda kv: -kv[1]["mean"]):
        stages.add_row(stage, f"{got['p50']:.3f}", f"{got['p95']:.3f}", f"{got['mean']:.3f}")
    console.print(stages)
    console.print("tail (slowest 5% in the stage pass):")
    for item in result["tail"][:10]:
        console.print(f"  {item['ms']:.2f} ms, {item['variants']} variant(s): {item['query']}")
    gcs = result["gc_pauses_ms"]
    console.print(f"GC during the timed passes: {gcs['count']} collections, max {gcs['max']:.2f} ms")
    before, after = result["load_average"]
    console.print(f"load average {before[0]:.2f} -> {after[0]:.2f} on {result['cpu_count']} cores")


if __name__ == "__main__":
    main()
