"""How often find_tool says "nothing fits": by the match scores alone, and as served (the arms' word on it).

A result is a weak match when its match score is under the threshold (optimizer/calibration.py); every result
weak used to be `nothing_fits`. A short conversational request ("remember that my cat is called Tom") has a low
cosine similarity to any tool's document, right or not. Served now (optimizer/fit_signal.py): no "nothing fits"
when the vector arm and the keyword arm put the answer's first tool first, the keyword arm by at least
`KEYWORD_LEAD` times its runner-up's score (a lone keyword match is no lead).

Measured through the served path: each request goes through `OptimizerFront`'s own search and answer (as
find_tool builds it, default limit), over the set's index; "scores alone" reads that answer's weak-match marks,
"served" its `nothing_fits`. So this cannot drift from what the gateway says. Per set on its real requests
(judged queries: how many hear "nothing fits", and how often the top result is relevant when the rule lifts
it), on nonsense requests (random letter strings, as `eval.calibrate`), and on foreign requests (another set's
queries: real words, most outside this catalogue).

    python -m eval.nothing_fits [--sets toollens apibank ...] [--limit-queries N]
"""

from __future__ import annotations

import argparse
import os
import random
import string
import tempfile
from pathlib import Path
from typing import Any

from eval.calibrate import MODEL, NONSENSE_QUERIES, _index
from eval.datasets import TOOLRET_TASKS, Dataset, load_dataset
from eval.embed import load_shared_embedder
from eval.methods import OptimizerMethod
from vmcp_opt.config import VmcpConfig
from vmcp_opt.optimizer.catalogue_names import Starting
from vmcp_opt.optimizer.metatools import OptimizerFront

# (nothing fits by the match scores alone, nothing fits as served, the first result's tool id)
Flags = tuple[bool, bool, str | None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="*", default=["toollens", *TOOLRET_TASKS])
    parser.add_argument("--limit-queries", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "calibrate")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    embedder = load_shared_embedder(MODEL, True, args.out / "cache")
    sets = {name: load_dataset(name).limited(args.limit_queries) for name in args.sets}
    print("| set | requests | real: nothing fits (scores alone → served) | lifted and top relevant |", end="")
    print(" nonsense: nothing fits (scores alone → served) | foreign: nothing fits (scores alone → served) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="nothing-fits-") as scratch:
        for name, dataset in sets.items():
            method = _index(dataset, embedder, args.out)
            front = _served(method, Path(scratch))
            real = [_flags(front, method, text) for _, text in dataset.judged_queries()]
            lifted_right = [
                top is not None and dataset.qrels[qid].get(top, 0) > 0
                for (qid, _), (before, served, top) in zip(dataset.judged_queries(), real, strict=True)
                if before and not served
            ]
            nonsense = [_flags(front, method, text) for text in _nonsense()]
            foreign = [_flags(front, method, text) for text in _foreign(name, sets)]
            right = f"{sum(lifted_right)}/{len(lifted_right)}"
            print(
                f"| {name} | {len(real)} | {_rates(real)} | {right} | {_rates(nonsense)} | {_rates(foreign)} |",
                flush=True,
            )


def _served(method: OptimizerMethod, scratch: Path) -> OptimizerFront:
    """The gateway's find_tool provider with the method's settings, answering from the method's index."""
    settings = method.index.config.model_copy(update={"index_dir": str(scratch), "usage": False})
    front = OptimizerFront(VmcpConfig(optimizer=settings))
    front.index = method.index
    return front


def _flags(front: OptimizerFront, method: OptimizerMethod, text: str) -> Flags:
    """What find_tool answers `text` (no backend filter, no policy, its default limit)."""
    result = front._search_and_answer(text, front.settings.default_limit, None, None, Starting((), True))
    answer: dict[str, Any] = result.structured_content or {}
    assert answer.get("ranking") == "hybrid", answer.get("ranking")
    tools = answer["tools"]
    weak = bool(tools) and all(tool.get("weak_match") for tool in tools)
    top = method.id_by_name[tools[0]["name"]] if tools else None
    return weak, bool(answer.get("nothing_fits")), top


def _rates(flags: list[Flags]) -> str:
    if not flags:
        return "-"
    before = 100 * sum(f[0] for f in flags) / len(flags)
    served = 100 * sum(f[1] for f in flags) / len(flags)
    return f"{before:.1f} % → {served:.1f} %"


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
