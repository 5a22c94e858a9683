"""Score fusion of the keyword and vector arms (optimizer/ranking.py)."""

from __future__ import annotations

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.ranking import fuse, order, scale_to_best


def test_scale_to_best_keeps_a_close_second_near_the_first() -> None:
    assert scale_to_best({0: 8.0, 1: 7.2}) == {0: 1.0, 1: 0.9}
    assert scale_to_best({0: 0.0, 1: -1.0}) == {0: 0.0, 1: 0.0}


def test_near_tie_in_the_keyword_arm_leaves_the_vector_arm_the_decision() -> None:
    # Keyword arm: tool 1 just ahead of tool 0; vector arm: tool 0 clearly ahead.
    dense = {0: 0.62, 1: 0.50, 2: 0.20}
    sparse = {1: 6.0, 0: 5.7}
    assert order(fuse(dense, sparse, OptimizerConfig(fusion_scaling="max")))[0] == 0
    # Min-max (the default) sends the keyword arm's last candidate to 0: the near-tie becomes 1 against 0.
    assert order(fuse(dense, sparse, OptimizerConfig()))[0] == 1
