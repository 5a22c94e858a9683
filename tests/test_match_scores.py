"""What find_tool shows of a ranking: a match score on an absolute 0..1 scale, weak matches marked, "nothing
fits" when all are, and links (`supplies`, `used_with`) only to tools in the same answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmcp_opt.config import VmcpConfig
from vmcp_opt.optimizer.calibration import SCALES, MatchScale, scale_for
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.index import SearchHit
from vmcp_opt.optimizer.metatools import OptimizerFront


def front(tmp_path: Path, **optimizer: object) -> OptimizerFront:
    return OptimizerFront(VmcpConfig.model_validate({"optimizer": {"index_dir": str(tmp_path), **optimizer}}))


def hit(name: str, score: float, similarity: float | None, **links: object) -> SearchHit:
    return SearchHit(ToolRecord(name=name, backend="b"), score, similarity=similarity, **links)  # type: ignore[arg-type]


def test_the_default_model_has_a_scale_that_rises_with_similarity() -> None:
    scale = scale_for("all-MiniLM-L6-v2")
    assert scale is not None
    assert 0.0 < scale(0.0) < scale(0.5) < scale(0.9) < 1.0
    assert 0.0 < scale.threshold < 1.0


def test_scores_are_match_scores_and_weak_ones_are_marked(tmp_path: Path) -> None:
    shown = front(tmp_path, match_threshold=0.5)._shown(
        [hit("good", 1.0, 0.9), hit("poor", 0.6, 0.1), hit("unscored", 0.5, None)]
    )
    scale = SCALES["all-MiniLM-L6-v2"]
    assert shown[0]["score"] == round(scale(0.9), 4) and "weak_match" not in shown[0]
    assert shown[1]["score"] == round(scale(0.1), 4) and shown[1]["weak_match"] is True
    assert shown[2]["score"] == 0.5 and "weak_match" not in shown[2]  # no vector: the ranking's own score


def test_the_order_is_the_rankings_even_when_match_scores_disagree(tmp_path: Path) -> None:
    shown = front(tmp_path)._shown([hit("first", 1.0, 0.2), hit("second", 0.9, 0.8)])
    assert [tool["name"] for tool in shown] == ["first", "second"]


def test_links_name_only_tools_in_the_answer(tmp_path: Path) -> None:
    shown = front(tmp_path)._shown(
        [
            hit("issuer", 1.0, 0.5, supplies=("filtered_out", "token")),
            hit("companion", 0.9, 0.5, used_with="filtered_out"),
            hit("issuer2", 0.8, 0.5, supplies=("issuer", "token"), used_with="companion"),
        ]
    )
    assert "supplies" not in shown[0]
    assert "used_with" not in shown[1]
    assert shown[2]["supplies"] == {"tool": "issuer", "argument": "token"}
    assert shown[2]["used_with"] == "companion"


def test_another_model_without_a_scale_keeps_the_ranking_scores(tmp_path: Path) -> None:
    scale = MatchScale(1.0, 0.0, 0.5)
    assert scale(0.0) == 0.5
    optimizer = front(tmp_path)
    optimizer.match_scale = None
    shown = optimizer._shown([hit("a", 0.75, 0.9)])
    assert shown[0]["score"] == 0.75 and "weak_match" not in shown[0]


@pytest.mark.anyio
async def test_a_tool_changed_or_removed_shows_in_the_next_find_tool(tmp_path: Path) -> None:
    """Each tool's part of an answer is kept per record: a changed tool is a new record, a removed one is
    not searched, whatever the answers before showed."""
    optimizer = front(tmp_path, vector_wait=0)

    def tool(name: str, description: str) -> ToolRecord:
        return ToolRecord(name=name, backend="b", description=description, input_schema={"type": "object"})

    optimizer.index.update_keywords([tool("forecast", "Weather forecast for a city"), tool("radar", "Weather radar")])
    before = (await optimizer.find_tool("weather forecast", 5, None)).structured_content or {}
    assert {found["name"] for found in before["tools"]} == {"forecast", "radar"}

    optimizer.index.update_keywords([tool("forecast", "Hourly weather forecast for a city")])
    after = (await optimizer.find_tool("weather forecast", 5, None)).structured_content or {}
    assert [(found["name"], found["description"]) for found in after["tools"]] == [
        ("forecast", "Hourly weather forecast for a city")
    ]
