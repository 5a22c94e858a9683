"""How often find_tool says "nothing fits", with and without the keyword arm's word on it.

`nothing_fits` is said when every result's match score is under the threshold (optimizer/calibration.py). A short
conversational request ("remember that my cat is called Tom") has a low cosine similarity to any tool's document,
right or not. The variant measured here: no "nothing fits" when the keyword arm's own first result (BM25 on the
request) is the served first result, i.e. both arms agree on the top tool. Measured per set on its real requests
(judged queries: how many hear "nothing fits", and how often the top result is relevant when the rule lifts it),
on nonsense requests (random letter strings, as `eval.calibrate`), and on foreign requests (another set's queries:
real words, most outside this catalogue).

    python -m eval.nothing_fits [--sets toollens apibank ...] [--limit-queries N]
"""

from __future__ import annotations

import argparse
import os
import random
import string
from pathlib import Path

from eval.calibrate import MODEL, NONSENSE_QUERIES, _index
from eval.datasets import TOOLRET_TASKS, Dataset, load_dataset
from eval.embed import load_shared_embedder
from eval.methods import OptimizerMethod
from vmcp_opt.optimizer import keyword_arm
from vmcp_opt.optimizer.calibration import scale_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", nargs="*", default=["toollens", *TOOLRET_TASKS])
    parser.add_argument("--limit-queries", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "calibrate")
    parser.add_argument("--lead", type=float, default=1.0, help="the keyword arm's top score over its second's")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    embedder = load_shared_embedder(MODEL, True, args.out / "cache")
    sets = {name: load_dataset(name).limited(args.limit_queries) for name in args.sets}
    print("| set | requests | real: nothing fits (now → agreeing arms lift it) | lifted and top relevant |", end="")
    print(" nonsense: nothing fits (now → then) | foreign: nothing fits (now → then) |")
    print("|---|---|---|---|---|---|")
    for name, dataset in sets.items():
        method = _index(dataset, embedder, args.out)
        real = [_flags(method, text, args.lead) for _, text in dataset.judged_queries()]
        lifted_right = [
            top is not None and dataset.qrels[qid].get(top, 0) > 0
            for (qid, _), (now, then, top) in zip(dataset.judged_queries(), real, strict=True)
            if now and not then
        ]
        nonsense = [_flags(method, text, args.lead) for text in _nonsense()]
        foreign = [_flags(method, text, args.lead) for text in _foreign(name, sets)]
        right = f"{sum(lifted_right)}/{len(lifted_right)}"
        print(
            f"| {name} | {len(real)} | {_rates(real)} | {right} | {_rates(nonsense)} | {_rates(foreign)} |", flush=True
        )


def _flags(method: OptimizerMethod, text: str, lead: float) -> tuple[bool, bool, str | None]:
    """(nothing fits as served, nothing fits unless the keyword arm clearly agrees on the top tool, its id)."""
    scale = scale_for(MODEL)
    assert scale is not None
    hits = method.index.search(text, limit=8).hits
    if not hits:
        return False, False, None
    now = all(h.similarity is not None and scale(h.similarity) < scale.threshold for h in hits)
    keyword = keyword_arm.candidates(method.index._snapshot.bm25, text.strip(), 2, None)
    scores = sorted(keyword.values(), reverse=True)
    top_doc = method.index._snapshot.positions.get(hits[0].record.name)
    leads = (
        bool(scores) and keyword.get(top_doc, 0.0) == scores[0] and (len(scores) < 2 or scores[0] >= lead * scores[1])
    )
    return now, now and not leads, method.id_by_name[hits[0].record.name]


def _rates(flags: list[tuple[bool, bool, str | None]]) -> str:
    if not flags:
        return "-"
    now = 100 * sum(f[0] for f in flags) / len(flags)
    then = 100 * sum(f[1] for f in flags) / len(flags)
    return f"{now:.1f} % → {then:.1f} %"


def _nonsense() -> list[str]:
    rng = random.Random(7)
    return [
        " ".join(
            "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
            for _ in range(rng.randint(2, 4))
        )
        for _ in range(NONSENSE_QUERIES)
    ]


def _foreign(name: str, sets: dict[str, Dataset]) -> list[str]:
    """Up to 200 queries of the other sets, in turn."""
    others = [[text for _, text in d.judged_queries()] for n, d in sets.items() if n != name]
    mixed = [q for group in zip(*others, strict=False) for q in group] if others else []
    return mixed[:200]


if __name__ == "__main__":
    main()
