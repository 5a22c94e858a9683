"""A request's query embedding: every text (the request and its intents) in one padded batch, against groups
of near-equal length (`batching.low_padding_groups`, what `OnnxEncoder.encode` runs), interleaved.

    PYTHONPATH=. .venv/bin/python bench/query_groups.py [--queries 600] [--precision int8]

The requests are bench/optimizer.py's task questions; each is split into its variants as find_tool splits it
(`ranking.query_variants`). Three paths: one padded batch, the groups one after another, and the groups as
served (about half on a helper thread when there are two or more). Prints p50/p95/mean per path, p95/p50,
and the tokens each path runs (real and padded); checks that the vectors agree.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.optimizer import queries  # noqa: E402
from eval.metrics import percentile  # noqa: E402
from vmcp_opt.config import OptimizerConfig  # noqa: E402
from vmcp_opt.optimizer import ranking  # noqa: E402
from vmcp_opt.optimizer.batching import low_padding_groups  # noqa: E402
from vmcp_opt.optimizer.embedding import default_model_cache  # noqa: E402
from vmcp_opt.optimizer.model_registry import resolve_model  # noqa: E402
from vmcp_opt.optimizer.onnx_encoder import load_onnx_embedder  # noqa: E402
from vmcp_opt.optimizer.onnx_export import Precision  # noqa: E402
from vmcp_opt.optimizer.side_thread import SideThread  # noqa: E402


def padded_tokens(lengths: Sequence[int], groups: list[list[int]]) -> int:
    return sum(max(lengths[row] for row in group) * len(group) for group in groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--precision", default="int8", choices=["fp32", "int8", "int8-dynamic"])
    args = parser.parse_args()
    precision: Precision = args.precision
    encoder = load_onnx_embedder(resolve_model("all-MiniLM-L6-v2"), default_model_cache(), precision=precision).encoder
    config = OptimizerConfig()
    requests = [ranking.query_variants(text, config) for text in queries(args.queries)]

    def one_batch(texts: list[str]) -> np.ndarray:
        return encoder.encode_ids(encoder.tokenize(texts))

    one_thread = copy.copy(encoder)
    one_thread.side = SideThread("unused", enabled=False)
    paths: dict[str, Callable[[list[str]], np.ndarray]] = {
        "one padded batch": one_batch,
        "groups, one thread": one_thread.encode,
        "groups": encoder.encode,
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    tokens = {"real": 0, "one padded batch": 0, "groups, one thread": 0, "groups": 0}
    worst = 1.0
    for i, texts in enumerate(requests):
        vectors = {}
        for name in list(paths) if i % 2 == 0 else list(paths)[::-1]:
            started = time.perf_counter()
            vectors[name] = paths[name](texts)
            samples[name].append((time.perf_counter() - started) * 1000)
        worst = min(worst, float((vectors["groups"] * vectors["one padded batch"]).sum(axis=1).min()))
        lengths = [len(ids) for ids in encoder.tokenize(texts)]
        tokens["real"] += sum(lengths)
        tokens["one padded batch"] += padded_tokens(lengths, [list(range(len(lengths)))])
        tokens["groups"] += padded_tokens(lengths, low_padding_groups(lengths))
        tokens["groups, one thread"] = tokens["groups"]
    multi = sum(len(texts) > 1 for texts in requests)
    print(
        f"{len(requests)} requests ({multi} with intents), ONNX {precision}, one intra-op thread; "
        f"'groups' runs about half of a request's groups on a helper thread"
    )
    for name, values in samples.items():
        p50, p95 = percentile(values, 50), percentile(values, 95)
        print(
            f"  {name:18} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  mean {np.mean(values):6.2f} ms  "
            f"p95/p50 {p95 / p50:.2f}  tokens run {tokens[name]:,} (real {tokens['real']:,})"
        )
    base = samples["one padded batch"]
    for name in ("groups, one thread", "groups"):
        new = samples[name]
        print(
            f"  {name} / one batch: p95 {percentile(new, 95) / percentile(base, 95):.2f}x, "
            f"mean {np.mean(new) / np.mean(base):.2f}x"
        )
    print(f"  smallest cosine between the paths: {worst:.6f}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
