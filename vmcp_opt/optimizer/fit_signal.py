"""Whether nothing fits a find_tool request: the match scores' word, unless both arms clearly agree.

find_tool says `nothing_fits` when every result's match score is under the threshold (optimizer/calibration.py).
A short conversational request ("remember that my cat is called Tom") has a low cosine similarity to every
tool's document, the right one's too, so it heard "nothing fits" with the right tool first. The first-stage
arms tell such a request apart from one outside the catalogue: when the vector arm and the keyword arm put the
same tool first, the answer's first result, and the keyword arm scores it at least `KEYWORD_LEAD` times its
runner-up, that tool fits. Both arms, not the keyword arm's alone: a foreign request sharing a word with a tool
("turn around, take 2 steps" and `SearchAround`) has a keyword arm sure of itself and a vector arm that is not.
And a runner-up: a word that only one tool has ("open the garage door" and `memory_open_nodes` in a small
catalogue) is no lead, and there the vector arm, led by the same word, agrees. Measured through this module by
`python -m eval.nothing_fits` (eval/README.md, "When both arms agree"). The ranking is untouched: this reads
the arms' candidates, it orders nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmcp_opt.optimizer import ranking
from vmcp_opt.optimizer.documents import ToolRecord

# The keyword arm's first score over its second's at which the arms' agreement outweighs the match scores. At 1
# (the keyword arm and the answer agreeing) about half of the foreign requests' "nothing fits" went; at 2, with
# the vector arm's word and a runner-up, a few real requests' go (each rightly) for at most half a point of
# foreign ones.
KEYWORD_LEAD = 2.0


@dataclass(frozen=True)
class ArmTops:
    """What each first-stage arm put first for the whole request (not its intents), before fusion."""

    # The vector arm's first tool; None while ranking by keywords, or when it had no candidate.
    vector: str | None
    # The keyword arm's first tool; None when no word of the request is in any allowed tool's document.
    keyword: str | None
    # The keyword arm's best two scores, best first (one or none when fewer tools have a word of the request).
    keyword_scores: tuple[float, ...] = ()


def arm_tops(records: Sequence[ToolRecord], dense: ranking.Ranking | None, sparse: ranking.Ranking) -> ArmTops:
    """`ArmTops` from the arms' candidates (positions in `records` -> raw score) for the whole request."""
    vector = ranking.head(dense, 1) if dense else []
    keyword = ranking.head(sparse, 2)
    return ArmTops(
        vector=records[vector[0]].name if vector else None,
        keyword=records[keyword[0]].name if keyword else None,
        keyword_scores=tuple(sparse[doc] for doc in keyword),
    )


def arms_vouch_for(arms: ArmTops | None, name: str) -> bool:
    """Whether both arms put `name` first, the keyword arm by at least `KEYWORD_LEAD` times its runner-up (a
    lone keyword match is no lead: the one tool with a word of the request)."""
    if arms is None or arms.vector != name or arms.keyword != name:
        return False
    scores = arms.keyword_scores
    return len(scores) == 2 and scores[0] >= KEYWORD_LEAD * scores[1]


def nothing_fits(shown: Sequence[Mapping[str, Any]], arms: ArmTops | None) -> bool:
    """Whether find_tool says nothing fits the results it `shown` (each with its `name` and, under the match
    threshold, `weak_match`): all are weak matches and the arms do not vouch for the first."""
    if not shown or not all(result.get("weak_match") for result in shown):
        return False
    return not arms_vouch_for(arms, shown[0]["name"])
