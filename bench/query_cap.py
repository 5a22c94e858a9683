"""What capping the vector arm's query texts buys (issue 19, goal 3): tokens embedded per request and the
query embedding's time, per variant of eval/query_cap.py, interleaved in one process.

    PYTHONPATH=. .venv/bin/python bench/query_cap.py [--queries 600] [--repeat 2]

Requests are bench/optimizer.py's `queries()` split as find_tool splits them (`ranking.query_variants`); each
variant embeds them cut as eval/query_cap.py cuts them, on the served int8 ONNX encoder (`OnnxEncoder.encode`:
groups of near-equal length, about half on a helper thread). Prints, per variant, the tokens embedded per
request (p50/p95, here and over the five held-out sets' queries) and the embedding's process CPU and wall
time p50/p95 (variants in a rotating order per request, so load hits them alike).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.optimizer import queries  # noqa: E402
from eval.datasets import BUNDLED, load_dataset  # noqa: E402
from eval.metrics import percentile  # noqa: E402
from eval.query_cap import CappedQueries, TokenCutter  # noqa: E402
from vmcp_opt.config import OptimizerConfig  # noqa: E402
from vmcp_opt.optimizer import ranking  # noqa: E402
from vmcp_opt.optimizer.embedding import default_model_cache  # noqa: E402
from vmcp_opt.optimizer.model_registry import resolve_model  # noqa: E402
from vmcp_opt.optimizer.onnx_encoder import load_onnx_embedder  # noqa: E402

UNCAPPED = 10**6
# name -> (cap on every text, cap on a multi-intent request's own text or None)
VARIANTS: dict[str, tuple[int, int | None]] = {
    "none": (UNCAPPED, None),
    "qcap128": (128, None),
    "qcap96": (96, None),
    "qcap64": (64, None),
    "qcap48": (48, None),
    "qcap32": (32, None),
    "whole32": (UNCAPPED, 32),
    "whole0": (UNCAPPED, 0),
    "qcap64-whole32": (64, 32),
    "qcap64-whole0": (64, 0),
}


def cut_request(capper: CappedQueries, texts: list[str]) -> list[str]:
    """The texts the vector arm embeds for one request's variants under `capper`'s caps."""
    return [text for _, text in capper.cut(texts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=2, help="passes over the requests")
    args = parser.parse_args()
    spec = resolve_model("all-MiniLM-L6-v2")
    embedder = load_onnx_embedder(spec, default_model_cache(), precision="int8")
    encoder = embedder.encoder
    cutter = TokenCutter(str(spec.path / "tokenizer.json"), spec.query_prefix)
    config = OptimizerConfig()
    cappers = {name: CappedQueries(embedder, cutter, config, cap, whole) for name, (cap, whole) in VARIANTS.items()}
    served = spec.max_seq_length

    def tokens(texts: list[str]) -> int:
        return sum(min(cutter.count(text), served) for text in texts)

    bench_requests = [ranking.query_variants(text, config) for text in queries(args.queries)]
    eval_requests = [
        ranking.query_variants(text, config) for name in BUNDLED for _, text in load_dataset(name).judged_queries()
    ]
    cut = {name: [cut_request(capper, texts) for texts in bench_requests] for name, capper in cappers.items()}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for texts in bench_requests[:5]:
        encoder.encode(texts)  # warm-up
    for rep in range(args.repeat):
        for i in range(len(bench_requests)):
            shift = (i + rep) % len(names)
            for name in names[shift:] + names[:shift]:
                texts = [spec.query_prefix + text for text in cut[name][i]]
                if not texts:
                    continue
                started_cpu, started = time.process_time(), time.perf_counter()
                encoder.encode(texts)
                cpu[name].append((time.process_time() - started_cpu) * 1000)
                wall[name].append((time.perf_counter() - started) * 1000)
    print(
        f"{len(bench_requests)} bench requests ({sum(len(t) > 1 for t in bench_requests)} with intents) x "
        f"{args.repeat}; {len(eval_requests)} held-out requests; int8 ONNX, one intra-op thread"
    )
    print(
        "| variant | tokens/request p50 / p95 (bench) | (held-out sets) | CPU p50 / p95 ms | p95/p50 | wall p50 / p95 ms |"
    )
    print("|---|---|---|---|---|---|")
    for name, capper in cappers.items():
        bench_tokens = [tokens(texts) for texts in cut[name]]
        eval_tokens = [tokens(cut_request(capper, texts)) for texts in eval_requests]
        c50, c95 = percentile(cpu[name], 50), percentile(cpu[name], 95)
        print(
            f"| {name} | {percentile(bench_tokens, 50):.0f} / {percentile(bench_tokens, 95):.0f} | "
            f"{percentile(eval_tokens, 50):.0f} / {percentile(eval_tokens, 95):.0f} | {c50:.2f} / {c95:.2f} | "
            f"{c95 / c50:.2f} | {percentile(wall[name], 50):.2f} / {percentile(wall[name], 95):.2f} |"
        )
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
