"""The reworked search ranks exactly as the old one: top-10 names, scores and similarities, on real queries.

    PYTHONPATH=. .venv/bin/python bench/search_equality.py

Runs `ToolIndex.search` and `legacy_search` (bench/search_path.py: the search as it was at 53bee71) side by
side over the eval sets' catalogues and queries: ToolLens (test split, with the co-usage graph of its
past tasks, so companions are raised), ApiGen and API-Bank. Each query also runs filtered, by a caller's
`names` (every other tool) and by `backends`. Scores and similarities must agree to 1e-6, names and the
reasons (`used_with`, `supplies`) exactly. Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.search_path import legacy_search  # noqa: E402
from eval.datasets import load_dataset  # noqa: E402
from eval.methods import past_usage  # noqa: E402
from vmcp_opt.config import OptimizerConfig  # noqa: E402
from vmcp_opt.optimizer.embedding import load_configured_embedder  # noqa: E402
from vmcp_opt.optimizer.index import SearchResult, ToolIndex  # noqa: E402

TOLERANCE = 1e-6
DATASETS = ("toollens", "apigen", "apibank")


def differences(old: SearchResult, new: SearchResult) -> list[str]:
    """What differs between two results, within the tolerance for floats."""
    found = []
    if old.mode != new.mode:
        found.append(f"mode {old.mode} != {new.mode}")
    if [h.record.name for h in old.hits] != [h.record.name for h in new.hits]:
        return [*found, f"names {[h.record.name for h in old.hits]} != {[h.record.name for h in new.hits]}"]
    for rank, (a, b) in enumerate(zip(old.hits, new.hits, strict=True), start=1):
        if abs(a.score - b.score) > TOLERANCE:
            found.append(f"#{rank} score {a.score!r} != {b.score!r}")
        if (a.similarity is None) != (b.similarity is None) or (
            a.similarity is not None and b.similarity is not None and abs(a.similarity - b.similarity) > TOLERANCE
        ):
            found.append(f"#{rank} similarity {a.similarity!r} != {b.similarity!r}")
        if (a.used_with, a.supplies) != (b.used_with, b.supplies):
            found.append(f"#{rank} reasons {(a.used_with, a.supplies)} != {(b.used_with, b.supplies)}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-dir", type=Path, default=ROOT / "bench" / "results" / "search-equality-index")
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args()
    config = OptimizerConfig()
    embedder = load_configured_embedder(config)
    compared = mismatched = 0
    for name in DATASETS:
        dataset = load_dataset(name)
        records = [tool.fields.to_record() for tool in dataset.tools]
        usage = past_usage(dataset, records) if name == "toollens" else None
        index = ToolIndex(config, args.index_dir / name, embedder, usage=usage)
        index.update(records, progress=True)
        every_other = frozenset(record.name for record in records[::2])
        backends = sorted({record.backend for record in records})[::2]
        texts = [text for _, text in dataset.judged_queries()]
        for text in texts:
            for kwargs in ({}, {"names": every_other}, {"backends": backends}):
                old = legacy_search(index, text, args.limit, **kwargs)
                new = index.search(text, args.limit, **kwargs)
                compared += 1
                found = differences(old, new)
                if found:
                    mismatched += 1
                    if mismatched <= 20:
                        print(f"{name} {sorted(kwargs)} {text[:80]!r}: {'; '.join(found)}")
        print(f"{name}: {len(records)} tools, {len(texts)} queries x 3 (all, names, backends) compared")
    print(f"{compared} searches compared, {mismatched} differ (tolerance {TOLERANCE})")
    sys.exit(1 if mismatched else 0)


if __name__ == "__main__":
    main()
