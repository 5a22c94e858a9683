"""How good a match is, on a scale an agent can read: the same number means the same thing for every query.

The fused score orders the results, but it is relative (min-max scaled per query: the first result is near
1.0 whatever was asked). The match score is absolute: the cosine similarity between the request and the
tool's document, mapped to 0..1 by a logistic curve fitted on the dev split (ToolLens *train* qrels: the
chance that a result with that similarity is a tool the request needed). Below `threshold` a result is a
weak match; when every result is, nothing fits. The scale only changes what `find_tool` shows, never the
order (`eval/README.md`, "Match scores").

Fitted per embedding model by `python -m eval.calibrate`, which prints the line to paste below; a model
without a fitted scale shows no match score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MatchScale:
    # match = 1 / (1 + exp(-(slope * similarity + intercept)))
    slope: float
    intercept: float
    # A result whose match is below this is a weak match (learned on the dev split, see eval/calibrate.py).
    threshold: float

    def __call__(self, similarity: float) -> float:
        return 1.0 / (1.0 + math.exp(-(self.slope * similarity + self.intercept)))


# Per model id; from `python -m eval.calibrate` on the ToolLens train split.
SCALES: dict[str, MatchScale] = {
    "all-MiniLM-L6-v2": MatchScale(slope=6.17, intercept=-4.2172, threshold=0.0791),
}


def scale_for(model_id: str) -> MatchScale | None:
    return SCALES.get(model_id)
