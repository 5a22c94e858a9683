"""Tuning on the dev split only: ToolLens *train* qrels, a reproducible sample of queries.

`python -m eval.tune --queries 2000 base no-split rrf ...` scores the named optimizer configurations (the
production `ToolIndex.search` with `OptimizerConfig` overrides, see `VARIANTS`; `late_interaction: <weight>`
adds eval/late_interaction.py's re-ranking stage) next to bm25 and dense, and prints nDCG@10, Recall@5,
COMP@5 and MRR@10 in points. Query vectors are cached across configurations (latency is not measured
here). Test splits are never read.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from eval.datasets import Dataset, DatasetError, load_dataset
from eval.embed import SharedEmbedder, load_shared_embedder
from eval.methods import LATE_INTERACTION, BM25Method, Context, DenseMethod, Method, OptimizerMethod
from eval.metrics import evaluate
from eval.noise import noisy_dataset
from eval.query_cap import QUERY_CAP, WHOLE_CAP
from eval.query_template import API_TEMPLATE, QUERY_TEMPLATE

# Override keys that are not OptimizerConfig fields: OptimizerMethod takes them off before the config is made.
EVAL_ONLY_KEYS = frozenset({LATE_INTERACTION, QUERY_CAP, WHOLE_CAP, QUERY_TEMPLATE})

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "cold": {"usage": False},
    "usage-w0.7": {"usage_weight": 0.7},
    "usage-w1.3": {"usage_weight": 1.3},
    "usage-seeds5": {"usage_seeds": 5},
    "no-split": {"split_intents": False},
    "rrf": {"fusion": "rrf"},
    "bm25-flat": {"bm25_k1": 0.9, "bm25_b": 0.3},
    "w0.3": {"dense_weight": 0.3},
    "w0.4": {"dense_weight": 0.4},
    "w0.6": {"dense_weight": 0.6},
    "w0.7": {"dense_weight": 0.7},
    "late-interaction": {LATE_INTERACTION: 0.7},
    "late-interaction-w0.5": {LATE_INTERACTION: 0.5},
    "late-interaction-w0.6": {LATE_INTERACTION: 0.6},
    "late-interaction-w0.8": {LATE_INTERACTION: 0.8},
    "params1": {"usage": False, "parameter_weight": 1, "fusion_scaling": "max"},
    "params2": {"usage": False, "parameter_weight": 2, "fusion_scaling": "max"},
    "params3": {"usage": False, "parameter_weight": 3, "fusion_scaling": "max"},
    "minmax": {"usage": False, "fusion_scaling": "minmax", "parameter_weight": 2},
    "minmax-params1": {"usage": False, "fusion_scaling": "minmax", "parameter_weight": 1},
    # Sixth round: the parameters' weight chosen per catalogue so they make this share of the keyword arm's
    # tokens (0.232 is where weight 2 puts ToolLens; 0.131 is weight 1 with full descriptions).
    "share0.131": {"usage": False, "parameter_share": 0.131},
    "share0.18": {"usage": False, "parameter_share": 0.18},
    "share0.232": {"usage": False, "parameter_share": 0.232},
    "share0.31": {"usage": False, "parameter_share": 0.31},
    "share0.375": {"usage": False, "parameter_share": 0.375},
    "share0.45": {"usage": False, "parameter_share": 0.45},
    "share0.5": {"usage": False, "parameter_share": 0.5},
    # Seventh round: the share rule counting a head word that is a parameter name as a parameter word, with
    # the weight capped at 2 (the sixth round's lead).
    **{
        f"share-names{share}": {
            "usage": False,
            "parameter_share": share,
            "parameter_share_names": True,
            "parameter_share_cap": 2.0,
        }
        for share in (0.232, 0.28)
    },
    "share-names0.232-cap5": {"usage": False, "parameter_share": 0.232, "parameter_share_names": True},
    # Seventh round: pseudo-relevance feedback from the first fused results (optimizer/feedback.py), cold.
    **{
        f"prf-d{docs}-v{beta}": {"usage": False, "feedback_docs": docs, "feedback_dense": beta}
        for docs in (3, 5, 10)
        for beta in (0.2, 0.5, 1.0)
    },
    **{
        f"prf-d{docs}-t{terms}-w{weight}": {
            "usage": False,
            "feedback_docs": docs,
            "feedback_terms": terms,
            "feedback_term_weight": weight,
        }
        for docs in (3, 5, 10)
        for terms in (5, 10, 20)
        for weight in (0.1, 0.3, 0.5)
    },
    # Issue 19 goal 3 (eval/query_cap.py), cold: the vector arm's query texts capped at N tokens; `whole<M>`
    # caps a multi-intent request's own vector at M tokens (0: no vector, its keyword arm alone).
    **{f"qcap{cap}": {"usage": False, QUERY_CAP: cap} for cap in (128, 96, 64, 48, 32)},
    **{f"whole{whole}": {"usage": False, WHOLE_CAP: whole} for whole in (64, 32, 0)},
    **{f"qcap64-whole{whole}": {"usage": False, QUERY_CAP: 64, WHOLE_CAP: whole} for whole in (32, 0)},
    # Fifteenth round: the vector arm's texts through a template (eval/query_template.py).
    **{
        f"template-{name}": {"usage": False, QUERY_TEMPLATE: template}
        for name, template in {
            "tool-that": "A tool that can {query}",
            "tool-for": "Tool for: {query}",
            "api-to": API_TEMPLATE,
            "function": "A function to {query}",
            "need": "I need a tool to {query}",
        }.items()
    },
    "qcap48-whole0": {"usage": False, QUERY_CAP: 48, WHOLE_CAP: 0},
    "intent-mean": {"usage": False, "whole_request_vector": "intent_mean"},
    "dense-only": {"dense_weight": 1.0},
    "keyword-only": {"dense_weight": 0.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variants", nargs="*", default=["base"])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--baselines", action="store_true", help="also score bm25 and dense")
    parser.add_argument("--set", action="append", default=[], help="extra override key=value for every variant")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="registry id or local model directory")
    parser.add_argument(
        "--noisy", action="store_true", help="describe every tool by a docstring, as real servers do (eval/noise.py)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "tune")
    parser.add_argument(
        "--data-dir", type=Path, help="where the bundled sets live (default ../shared/eval-data, or $VMCP_EVAL_DATA)"
    )
    parser.add_argument(
        "--usage-curve",
        action="store_true",
        help="score the default optimizer with 0, 100, 300, 1,000, 3,000 and all past tasks as its usage "
        "history, and plot the curve to eval/plots/usage_curve.png",
    )
    args = parser.parse_args()
    extra = _checked_arguments(parser, args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        dataset = load_dataset("toollens", args.data_dir, split="train").limited(args.queries)
    except DatasetError as exc:
        parser.error(str(exc))
    if args.noisy:
        dataset = noisy_dataset(dataset)
    embedder = load_shared_embedder(args.model, True, args.out / "cache")
    embedder.query_cache = {}
    if args.usage_curve:
        usage_curve(dataset, embedder, args.out, extra)
        return
    methods: list[Method] = [BM25Method(), DenseMethod()] if args.baselines else []
    methods += [OptimizerMethod(name, {**VARIANTS.get(name, {}), **extra}) for name in args.variants]
    queries = dataset.judged_queries()
    noise = ", tools described by docstrings" if args.noisy else ""
    print(f"ToolLens train (dev): {len(queries)} queries, {len(dataset.tools)} tools{noise}; overrides {extra}")
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


USAGE_CURVE_SIZES = (0, 100, 300, 1000, 3000)
USAGE_CURVE_PLOT = Path(__file__).resolve().parent / "plots" / "usage_curve.png"


def usage_curve(dataset: Dataset, embedder: SharedEmbedder, out: Path, extra: dict[str, Any]) -> None:
    """How much history the co-usage graph needs: the default optimizer over growing usage histories."""
    past = [(qid, tools) for qid, tools in dataset.usage.items() if qid not in dataset.qrels]
    sizes = [size for size in USAGE_CURVE_SIZES if size < len(past)] + [len(past)]
    points: list[tuple[int, dict[str, float]]] = []
    queries = dataset.judged_queries()
    for size in sizes:
        sample = dict(random.Random(1).sample(past, size))
        method = OptimizerMethod("optimizer", extra)
        method.build(Context(replace(dataset, usage=sample), embedder, out))
        s = evaluate({qid: method.search(text, 10) for qid, text in queries}, dataset.qrels, [5, 10])
        points.append((size, s))
        print(f"{size:>6} past tasks  nDCG@10 {100 * s['ndcg@10']:5.1f}  COMP@5 {100 * s['comp@5']:5.1f}", flush=True)
    _plot_usage_curve(points, len(queries))


def _plot_usage_curve(points: list[tuple[int, dict[str, float]]], queries: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [max(size, 10) for size, _ in points]  # 0 drawn at 10 on the log axis, labelled "none"
    for metric, label in (("ndcg@10", "nDCG@10"), ("recall@5", "Recall@5"), ("comp@5", "COMP@5")):
        ax.plot(xs, [100 * s[metric] for _, s in points], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks(xs, ["none" if size == 0 else f"{size:,}" for size, _ in points], fontsize=7)
    ax.set_xlabel("past tasks in the usage history")
    ax.set_ylabel("points")
    ax.set_title(f"optimizer on the ToolLens dev split ({queries:,} queries)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    USAGE_CURVE_PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(USAGE_CURVE_PLOT, dpi=120)
    plt.close(fig)
    print(f"wrote {USAGE_CURVE_PLOT}")


def _checked_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Refuse, before the model loads, what would score the wrong thing: a misspelt variant ran as the default
    configuration under the misspelt name, `--queries 0` ended in a KeyError, a bad `--set` in a traceback.
    Returns the `--set` overrides."""
    from pydantic import ValidationError

    from vmcp_opt.config import OptimizerConfig

    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.queries < 1:
        parser.error(f"--queries needs a positive number, got {args.queries}")
    extra = dict(_parse(item) for item in args.set)
    for name in args.variants:
        fields = {key: value for key, value in {**VARIANTS[name], **extra}.items() if key not in EVAL_ONLY_KEYS}
        try:
            OptimizerConfig(**fields)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            parser.error(f"--set: {problems}")
    return extra


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
