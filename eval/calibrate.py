"""find_tool's match scale: fitted on the dev split, checked on the held-out sets.

`python -m eval.calibrate` runs the production `ToolIndex.search` (defaults, no usage history) on the
ToolLens *train* qrels (dev), fits `match = sigmoid(slope * similarity + intercept)` to whether each of the
top-10 results is a relevant tool, and sets the weak-match threshold so that on dev at most `--miss` (5 %)
of the requests would hear "nothing fits" (their best match below it). It then scores the held-out sets
with that scale, the fit never seeing them: nDCG@10 (the order, which the scale does not touch), how often
a real request hears "nothing fits", the same for nonsense requests (random letter strings), and the
calibration itself (mean match against the share of relevant results, per band). Prints the
`MatchScale(...)` line for `vmcp_opt/optimizer/calibration.py`.
"""

from __future__ import annotations

import argparse
import os
import random
import string
from pathlib import Path

import numpy as np

from eval.datasets import TOOLRET_TASKS, Dataset, load_dataset
from eval.embed import SharedEmbedder, load_shared_embedder
from eval.methods import Context, OptimizerMethod
from eval.metrics import evaluate
from vmcp_opt.optimizer.calibration import MatchScale

MODEL = "all-MiniLM-L6-v2"
NONSENSE_QUERIES = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=2000, help="dev queries to fit on")
    parser.add_argument("--miss", type=float, default=0.05, help="share of dev requests allowed to hear 'nothing fits'")
    parser.add_argument("--limit-queries", type=int, default=None, help="held-out queries per set (all by default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "calibrate")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    embedder = load_shared_embedder(MODEL, True, args.out / "cache")

    dev = load_dataset("toollens", split="train").limited(args.queries)
    dev_method = _index(dev, embedder, args.out)
    similarity, relevant, best, _ = _scored(dev, dev_method)
    slope, intercept = fit_logistic(similarity, relevant)
    provisional = MatchScale(slope, intercept, 0.0)
    dev_best = np.array([provisional(s) for s in best])
    dev_nonsense = np.array([provisional(s) for s in _nonsense_best(dev_method)])
    print("dev trade-off: share of requests told 'nothing fits' at each threshold")
    for miss in (0.01, 0.02, 0.05, 0.10):
        t = float(np.quantile(dev_best, miss))
        print(
            f"  threshold {t:.3f}: real requests {100 * miss:.0f} %, nonsense {100 * np.mean(dev_nonsense < t):.1f} %"
        )
    threshold = float(np.quantile(dev_best, args.miss))
    scale = MatchScale(round(slope, 4), round(intercept, 4), round(threshold, 4))
    print(f"dev (ToolLens train, {len(best)} queries, {len(similarity)} results): {scale!r}")
    print(f'SCALES: "{MODEL}": {scale!r}')

    print(
        "\n| set | queries | nDCG@10 | 'nothing fits' (real requests) | 'nothing fits' (nonsense) | calibration error |"
    )
    print("|---|---|---|---|---|---|")
    for name in ("toollens", *TOOLRET_TASKS):
        held_out = load_dataset(name).limited(args.limit_queries)
        method = _index(held_out, embedder, args.out)
        sims, rel, tops, ndcg = _scored(held_out, method)
        nonsense = _nonsense_best(method)
        matches = np.array([scale(s) for s in sims])
        real_miss = np.mean([scale(s) < scale.threshold for s in tops])
        nonsense_miss = np.mean([scale(s) < scale.threshold for s in nonsense])
        print(
            f"| {name} | {len(tops)} | {100 * ndcg:.1f} | {100 * real_miss:.1f} % | {100 * nonsense_miss:.1f} % "
            f"| {100 * calibration_error(matches, rel):.1f} |",
            flush=True,
        )


def _index(dataset: Dataset, embedder: SharedEmbedder, out: Path) -> OptimizerMethod:
    method = OptimizerMethod("optimizer-cold", {"usage": False})
    method.build(Context(dataset, embedder, out))
    return method


def _scored(dataset: Dataset, method: OptimizerMethod) -> tuple[np.ndarray, np.ndarray, list[float], float]:
    """Every top-10 result's similarity and relevance, each request's best similarity, and nDCG@10."""
    sims: list[float] = []
    rel: list[float] = []
    best: list[float] = []
    rankings: dict[str, list[str]] = {}
    for qid, text in dataset.judged_queries():
        hits = method.index.search(text, limit=10).hits
        rankings[qid] = [method.id_by_name[hit.record.name] for hit in hits]
        known = [hit for hit in hits if hit.similarity is not None]
        for hit in known:
            sims.append(float(hit.similarity))
            rel.append(1.0 if dataset.qrels[qid].get(method.id_by_name[hit.record.name], 0) > 0 else 0.0)
        best.append(max((float(hit.similarity) for hit in known), default=-1.0))
    ndcg = evaluate(rankings, dataset.qrels, [10])["ndcg@10"]
    return np.array(sims), np.array(rel), best, ndcg


def _nonsense_best(method: OptimizerMethod) -> list[float]:
    """Each nonsense request's best similarity in this catalogue: two to four random 'words'."""
    rng = random.Random(7)
    best = []
    for _ in range(NONSENSE_QUERIES):
        words = [
            "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
            for _ in range(rng.randint(2, 4))
        ]
        hits = method.index.search(" ".join(words), limit=10).hits
        best.append(max((float(h.similarity) for h in hits if h.similarity is not None), default=-1.0))
    return best


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """Maximum-likelihood (slope, intercept) of P(y=1) = sigmoid(slope * x + intercept), by Newton's method."""
    features = np.column_stack([x, np.ones_like(x)])
    weights = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-features @ weights))
        gradient = features.T @ (y - p)
        hessian = features.T @ (features * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights += step
        if np.abs(step).max() < 1e-8:
            break
    return float(weights[0]), float(weights[1])


def calibration_error(matches: np.ndarray, relevant: np.ndarray, bands: int = 10) -> float:
    """Expected calibration error: |mean match - share relevant| per band of match, weighted by its size."""
    edges = np.linspace(0.0, 1.0, bands + 1)
    band = np.clip(np.digitize(matches, edges[1:-1]), 0, bands - 1)
    error = 0.0
    for b in range(bands):
        inside = band == b
        if inside.any():
            error += inside.mean() * abs(matches[inside].mean() - relevant[inside].mean())
    return float(error)


if __name__ == "__main__":
    main()
