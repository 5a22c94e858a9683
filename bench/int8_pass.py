"""The vector arm's int8 first pass against the float32 scan, in one process, interleaved.

    PYTHONPATH=. .venv/bin/python bench/int8_pass.py --index-dir DIR [--tools 10000] [--queries 200] [--scale 10]

Part 1, find_tool's search at `--tools` (the catalogue and queries of bench/find_tool_gateway.py; the
vectors persisted in DIR, embedded there first if absent: 100k tools took 8.5 min here): two `ToolIndex`es
over copies of DIR, one with `optimizer.int8_first_pass` off, each query to both in alternating order, the
query cache off so every search embeds its request. Prints the search's and the vector arm's p50/p95 (the arm timed by wrapping
`vector_arm.candidates`), how many rankings name different tools, and the largest score difference.

Part 2, the vector arm alone at `--tools` x `--scale` rows: the catalogue's vectors repeated with noise
(renormalised), the same requests' vectors, the arm with and without the pass, alternating; a 64 MB buffer is
written between calls, as the query embedding's work evicts the vectors from the cache in a real search.
Also the pass's build time and the RSS it adds. Writes bench/results/int8_pass.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.find_tool_gateway import RESULTS, catalogue_records, queries  # noqa: E402
from vmcp_opt.config import OptimizerConfig  # noqa: E402
from vmcp_opt.optimizer import vector_arm  # noqa: E402
from vmcp_opt.optimizer.index import SearchResult, ToolIndex  # noqa: E402


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def differs(a: SearchResult, b: SearchResult) -> tuple[bool, float]:
    """Whether the two rankings name different tools, and the largest score difference between them (the
    vector arm's min-max scaling turns its ~1e-7 float rounding into up to ~1e-6 on a fused score)."""
    if [h.record.name for h in a.hits] != [h.record.name for h in b.hits]:
        return True, float("inf")
    return False, max((abs(x.score - y.score) for x, y in zip(a.hits, b.hits, strict=True)), default=0.0)


def arm_timer(inner: Callable[..., Any], samples: list[float]) -> Callable[..., Any]:
    """`inner` (`vector_arm.candidates`), timed into `samples` (ms)."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        begun = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            samples.append((time.perf_counter() - begun) * 1000)

    return timed


def search_part(index_dir: Path, tools: int, texts: list[str]) -> dict[str, Any]:
    records = catalogue_records(tools)
    begun = time.perf_counter()
    stats = ToolIndex(OptimizerConfig(), index_dir).update(records, progress=True)  # embeds only what is new
    print(f"index in {index_dir}: {stats} ({time.perf_counter() - begun:.1f} s)", flush=True)
    gc.collect()
    with tempfile.TemporaryDirectory() as scratch:
        indexes: dict[str, ToolIndex] = {}
        for name, enabled in (("float32", False), ("int8", True)):
            copy = Path(scratch) / name
            shutil.copytree(index_dir, copy)
            config = OptimizerConfig(query_cache_size=0, int8_first_pass=enabled)
            indexes[name] = ToolIndex(config, copy)
            stats = indexes[name].update(records, progress=True)
            print(f"{name}: {stats}", flush=True)
        for text in texts[:20]:  # warm both
            for index in indexes.values():
                index.search(text, 8)
        search: dict[str, list[float]] = {name: [] for name in indexes}
        arm: dict[str, list[float]] = {name: [] for name in indexes}
        different, score_gap = 0, 0.0
        original = vector_arm.candidates
        try:
            for position, text in enumerate(texts):
                order = list(indexes) if position % 2 == 0 else list(reversed(indexes))
                results = {}
                for name in order:
                    vector_arm.candidates = arm_timer(original, arm[name])  # type: ignore[assignment]
                    begun = time.perf_counter()
                    results[name] = indexes[name].search(text, 8)
                    search[name].append((time.perf_counter() - begun) * 1000)
                names_differ, gap = differs(results["float32"], results["int8"])
                different += names_differ
                score_gap = max(score_gap, gap)
        finally:
            vector_arm.candidates = original  # type: ignore[assignment]
        embedder = indexes["int8"].embedder
        assert embedder is not None
        vectors = np.array(indexes["float32"]._snapshot.vectors, dtype=np.float32)
        query_vectors = embedder.encode_queries(texts)
    return {
        "tools": tools,
        "queries": len(texts),
        "rankings_differing": different,
        "largest_score_difference": score_gap,
        "search_ms": {name: summary(samples) for name, samples in search.items()},
        "arm_ms": {name: summary(samples) for name, samples in arm.items()},
        "_vectors": vectors,
        "_query_vectors": query_vectors,
    }


def arm_part(vectors: np.ndarray, query_vectors: np.ndarray, scale: int, depth: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    rows = np.concatenate([vectors + 0.02 * rng.standard_normal(vectors.shape) for _ in range(scale)])
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    config = OptimizerConfig()
    index = vector_arm.build(rows, config)
    view = vector_arm.stored_vectors(index, len(rows), rows.shape[1])
    process = psutil.Process()
    rss_before, begun = process.memory_info().rss, time.perf_counter()
    int8_pass = vector_arm.first_pass(view, config)
    prepared, rss_added = time.perf_counter() - begun, process.memory_info().rss - rss_before
    has_vector = np.ones(len(rows), dtype=bool)
    evict = np.ones(16_000_000, dtype=np.float32)
    timings: dict[str, list[float]] = {"float32": [], "int8": []}
    different = 0
    for position, query in enumerate(query_vectors):
        results = {}
        for name in ("float32", "int8") if position % 2 == 0 else ("int8", "float32"):
            evict += 1
            begun = time.perf_counter()
            results[name] = vector_arm.candidates(
                index, has_vector, query[None, :], depth, None, config, view, int8_pass if name == "int8" else None
            )[0]
            timings[name].append((time.perf_counter() - begun) * 1000)
        different += results["float32"].keys() != results["int8"].keys()
    return {
        "rows": len(rows),
        "depth": depth,
        "int8_pass_build_s": round(prepared, 2),
        "int8_pass_rss_mb": round(rss_added / 2**20, 1),
        "arm_ms": {name: summary(samples) for name, samples in timings.items()},
        "candidate_sets_differing": different,
    }


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(samples), 3),
        "p95": round(pct(samples, 0.95), 3),
        "mean": round(statistics.fmean(samples), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--tools", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--scale", type=int, default=10)
    args = parser.parse_args()
    args.index_dir.mkdir(parents=True, exist_ok=True)
    texts = queries(args.queries)
    first = search_part(args.index_dir, args.tools, texts)
    vectors, query_vectors = first.pop("_vectors"), first.pop("_query_vectors")
    second = arm_part(vectors, query_vectors, args.scale, OptimizerConfig().candidates)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "search": first, "arm_alone": second}
    print(json.dumps(report, indent=2))
    for part, key in ((first, "search_ms"), (first, "arm_ms"), (second, "arm_ms")):
        f32, i8 = part[key]["float32"], part[key]["int8"]
        print(
            f"{key} at {part.get('tools', part.get('rows'))}: float32 p50 {f32['p50']} / p95 {f32['p95']} ms, "
            f"int8 p50 {i8['p50']} / p95 {i8['p95']} ms, ratio p50 {i8['p50'] / f32['p50']:.2f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8_pass.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
