"""Tuning on the dev split only: ToolLens *train* qrels, a reproducible sample of queries.

`python -m eval.tune --queries 2000 base no-split rrf ...` scores the named optimizer configurations (the
production `ToolIndex.search` with `OptimizerConfig` overrides, see `VARIANTS`) next to bm25 and dense,
and prints nDCG@10, Recall@5, COMP@5 and MRR@10 in points. Query vectors are cached across
configurations (latency is not measured here). Test splits are never read.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from eval.datasets import load_dataset
from eval.embed import load_shared_embedder
from eval.methods import BM25Method, Context, DenseMethod, Method, OptimizerMethod
from eval.metrics import evaluate

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "no-split": {"split_intents": False},
    "rrf": {"fusion": "rrf"},
    "bm25-flat": {"bm25_k1": 0.9, "bm25_b": 0.3},
    "w0.3": {"dense_weight": 0.3},
    "w0.4": {"dense_weight": 0.4},
    "w0.6": {"dense_weight": 0.6},
    "w0.7": {"dense_weight": 0.7},
    "late-interaction": {"rerank": "late-interaction"},
    "late-interaction-w0.5": {"rerank": "late-interaction", "rerank_weight": 0.5},
    "late-interaction-w0.6": {"rerank": "late-interaction", "rerank_weight": 0.6},
    "late-interaction-w0.8": {"rerank": "late-interaction", "rerank_weight": 0.8},
    "dense-only": {"dense_weight": 1.0},
    "keyword-only": {"dense_weight": 0.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variants", nargs="*", default=["base"])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--baselines", action="store_true", help="also score bm25 and dense")
    parser.add_argument("--set", action="append", default=[], help="extra override key=value for every variant")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "tune")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dataset = load_dataset("toollens", split="train").limited(args.queries)
    embedder = load_shared_embedder("all-MiniLM-L6-v2", True, args.out / "cache")
    embedder.query_cache = {}
    extra = dict(_parse(item) for item in args.set)
    methods: list[Method] = [BM25Method(), DenseMethod()] if args.baselines else []
    methods += [OptimizerMethod(name, {**VARIANTS.get(name, {}), **extra}) for name in args.variants]
    queries = dataset.judged_queries()
    print(f"ToolLens train (dev): {len(queries)} queries, {len(dataset.tools)} tools; overrides {extra}")
    for method in methods:
        started = time.perf_counter()
        method.build(Context(dataset, embedder, args.out))
        rankings = {qid: method.search(text, 10) for qid, text in queries}
        s = evaluate(rankings, dataset.qrels, [5, 10])
        print(
            f"{method.name:<24} nDCG@10 {100 * s['ndcg@10']:5.1f}  R@5 {100 * s['recall@5']:5.1f}  "
            f"COMP@5 {100 * s['comp@5']:5.1f}  MRR@10 {100 * s['mrr@10']:5.1f}  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


def _parse(item: str) -> tuple[str, Any]:
    key, _, raw = item.partition("=")
    value: Any = raw
    if raw in ("true", "false"):
        value = raw == "true"
    else:
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
    return key, value


if __name__ == "__main__":
    main()
