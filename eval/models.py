"""Several embedding models in one `vmcp eval run` (`--model`, repeatable): what each costs, side by side.

Every model runs every method (`eval/harness.py`); this module adds what quality tables do not show: one
query embedded at a time, as `find_tool` embeds it (p50/p95), bulk documents per second, and the memory
of the index's vectors at 10,000 tools. `models_table` puts the models next to each other, with the mean
cold nDCG@10 over the run's datasets that eval/README.md's rule for the default model reads.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from eval.embed import SharedEmbedder, torch_threads
from eval.metrics import percentile

# The catalogue size the find_tool budget is stated for (issue 20: ≤ 5 ms per query at 10k tools).
BUDGET_TOOLS = 10_000
# The cold ranking the rule reads; `optimizer` when a run has no `optimizer-cold`.
COLD_METHODS = ("optimizer-cold", "optimizer")


@dataclass(frozen=True)
class ModelProfile:
    model: str
    dimensions: int
    # Where the timed texts came from (the run's first dataset).
    dataset: str
    query_ms_p50: float
    query_ms_p95: float
    bulk_texts_per_second: float
    vectors_mb_at_10k_tools: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_slug(model_id: str) -> str:
    """A directory name for one model's results."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-").lower() or "model"


def profile_model(
    embedder: SharedEmbedder, dataset: str, queries: Sequence[str], documents: Sequence[str]
) -> ModelProfile:
    """Time the model itself (never the eval's vector caches): `queries` one at a time after one warm-up,
    then `documents` as one bulk job, both on the embedder's thread counts."""
    inner = embedder.inner
    times: list[float] = []
    with torch_threads(embedder.query_threads):
        inner.encode_queries(list(queries[:1]))
        for text in queries:
            started = time.perf_counter()
            inner.encode_queries([text])
            times.append((time.perf_counter() - started) * 1000.0)
    with torch_threads(embedder.bulk_threads):
        started = time.perf_counter()
        inner.encode_documents(list(documents))
        bulk_seconds = time.perf_counter() - started
    return ModelProfile(
        model=embedder.model_id,
        dimensions=embedder.dimensions,
        dataset=dataset,
        query_ms_p50=round(percentile(times, 50), 3),
        query_ms_p95=round(percentile(times, 95), 3),
        bulk_texts_per_second=round(len(documents) / bulk_seconds, 1) if bulk_seconds > 0 else 0.0,
        vectors_mb_at_10k_tools=round(BUDGET_TOOLS * embedder.dimensions * 4 / 1e6, 1),
    )


def cold_ndcg(entry: dict[str, Any]) -> float | None:
    """nDCG@10 of the cold ranking on one dataset's entry, None when the run had neither cold method."""
    methods = entry["methods"]
    for name in COLD_METHODS:
        if name in methods:
            return float(methods[name]["ndcg@10"])
    return None


def models_table(runs: Sequence[dict[str, Any]]) -> str:
    """One row per model: cold nDCG@10 per dataset and their mean, dense's mean, then the profile."""
    datasets = list(dict.fromkeys(name for run in runs for name in run["datasets"]))
    header = ["model", *(f"{name} cold" for name in datasets), "mean cold", "mean dense"]
    header += ["query p50 ms", "query p95 ms", "bulk texts/s", "MB at 10k tools"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        colds = [cold_ndcg(run["datasets"][name]) if name in run["datasets"] else None for name in datasets]
        dense = [
            entry["methods"]["dense"]["ndcg@10"] for entry in run["datasets"].values() if "dense" in entry["methods"]
        ]
        profile = run.get("model_profile") or {}
        cells = [run["model"], *(_points(value) for value in colds), _points(_mean(colds)), _points(_mean(dense))]
        cells += [
            str(profile.get("query_ms_p50", "")),
            str(profile.get("query_ms_p95", "")),
            str(profile.get("bulk_texts_per_second", "")),
            str(profile.get("vectors_mb_at_10k_tools", "")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    embedding = runs[0].get("embedding") if runs else None
    if embedding:  # one encoder for every model of a run
        from eval.embed import embedding_caption

        lines += ["", embedding_caption(embedding, model=False)]
    return "\n".join(lines)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present and len(present) == len(values) else None


def _points(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"
