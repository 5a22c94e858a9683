"""An optional second stage of a search: a `Reranker` re-scores each query's fused candidates.

The gateway runs without one. `ToolIndex(..., reranker=...)` asks it, at each `update`, for the stage that
fits the new documents, keeps that stage in the snapshot it swaps in, and calls it in hybrid searches
between fusion and the merge of query variants (keyword-only searches and `update_keywords` snapshots skip
it). The one measured, late-interaction MaxSim, lost on held-out data and lives in `eval/late_interaction.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vmcp_opt.optimizer.ranking import Ranking


class RerankStage(Protocol):
    def rerank(self, queries: Sequence[str], fused: Sequence[Ranking], sparse: Sequence[Ranking]) -> list[Ranking]:
        """For each query variant, its fused candidates re-scored; `sparse[i]` is that query's keyword arm."""
        ...


class Reranker(Protocol):
    def prepare(self, documents: Sequence[str]) -> RerankStage:
        """The stage for an index of `documents` (by position), built by `ToolIndex.update`, off the search path."""
        ...
