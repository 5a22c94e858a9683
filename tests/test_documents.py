"""The documents each arm indexes (optimizer/documents.py) and the keyword arm's field weight."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer import keyword_arm
from vmcp_opt.optimizer.documents import ToolRecord, keyword_document, keyword_fields, tool_document
from vmcp_opt.optimizer.index import ToolIndex

LONG = "word " * 100
CITY = ToolRecord(
    name="weather_forecast",
    backend="weather",
    description="Forecast for the next days",
    input_schema={
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name (e.g. 'Lyon', 'Osaka')"},
            "units": {"type": "string", "description": "Temperature units, celsius or fahrenheit"},
            "notes": {"type": "string", "description": LONG},
        },
    },
)


def test_keyword_document_repeats_each_parameter_line() -> None:
    document = keyword_document(CITY, parameter_weight=2)
    assert document.count("city: City name") == 2
    assert document.count("Forecast for the next days") == 1
    assert keyword_document(CITY, parameter_weight=1) == tool_document(CITY)


def test_keyword_document_keeps_long_descriptions_whole_and_drops_sample_values() -> None:
    vector = tool_document(CITY)
    keyword = keyword_document(CITY, parameter_weight=2)
    assert LONG.strip() in keyword and LONG.strip() not in vector
    assert "Osaka" not in keyword and "Osaka" not in vector


def test_generated_title_is_not_a_parameter_description() -> None:
    record = ToolRecord(
        name="git_status",
        backend="git",
        description="Shows the working tree status",
        input_schema={
            "properties": {
                "repo_path": {"type": "string", "title": "Repo Path"},
                "depth": {"type": "integer", "title": "How many commits back"},
            }
        },
    )
    document = tool_document(record)
    assert "Repo Path" not in document
    assert "repo path" in document.splitlines()
    assert "depth: How many commits back" in document


def test_a_word_only_in_a_parameter_ranks_its_tool_by_keywords(tmp_path: Path) -> None:
    other = ToolRecord(name="stock_quote", backend="finance", description="Forecast of a stock price for the next days")
    index = ToolIndex(OptimizerConfig(), tmp_path)
    index.update_keywords([other, CITY])
    hits = index.search("forecast in celsius").hits
    assert hits[0].record.name == "weather_forecast"


def test_keyword_fields_split_the_head_from_the_full_parameter_lines() -> None:
    head, parameters = keyword_fields(CITY)
    assert "Forecast for the next days" in head and "city" not in head
    assert parameters.splitlines()[0] == "city: City name"
    assert LONG.strip() in parameters
    assert tool_document(CITY) != f"{head}\n{parameters}"  # the vector arm's copy cuts the long description


def _field_documents(records: list[ToolRecord]) -> tuple[list[str], list[str]]:
    fields = [keyword_fields(record) for record in records]
    return [head for head, _ in fields], [params for _, params in fields]


CATALOGUE = [
    CITY,
    ToolRecord(name="stock_quote", backend="finance", description="Forecast of a stock price for the next days"),
    ToolRecord(
        name="send_mail",
        backend="mail",
        description="Send an email",
        input_schema={"properties": {"to": {"description": "Recipient city office"}, "body": {}}},
    ),
]


@pytest.mark.parametrize("weight", [1, 2, 3])
def test_field_weight_scores_as_repeated_parameter_lines(weight: int) -> None:
    config = OptimizerConfig()
    heads, parameters = _field_documents(CATALOGUE)
    repeated = ["\n".join([head, *([params] * weight)]) for head, params in zip(heads, parameters, strict=True)]
    reference = keyword_arm.build(repeated, config)
    fields = keyword_arm.build_fields(heads, parameters, float(weight), config)
    for query in ("forecast in celsius", "city office email", "stock price", "next days units"):
        expected = keyword_arm.candidates(reference, query, 3, None)
        got = keyword_arm.candidates(fields, query, 3, None)
        assert got.keys() == expected.keys()
        assert all(got[doc] == pytest.approx(score, rel=1e-5) for doc, score in expected.items())


def test_a_fractional_weight_lies_between_its_neighbours() -> None:
    config = OptimizerConfig()
    heads, parameters = _field_documents(CATALOGUE)

    def city_score(weight: float) -> float:
        return keyword_arm.candidates(keyword_arm.build_fields(heads, parameters, weight, config), "celsius", 3, None)[
            0
        ]

    assert city_score(1.0) < city_score(1.5) < city_score(2.0)
    assert keyword_arm.build_fields([], [], 1.0, config) is None


def test_the_weight_for_a_share_puts_parameter_tokens_at_that_share() -> None:
    heads, parameters = ["alpha beta gamma delta"] * 2, ["epsilon zeta"] * 2  # 8 head tokens, 4 parameter ones
    assert keyword_arm.parameter_weight_for_share(heads, parameters, 1 / 3) == pytest.approx(1.0)
    weight = keyword_arm.parameter_weight_for_share(heads, parameters, 0.5)
    assert weight == pytest.approx(2.0)  # 2 x 4 = 8 parameter tokens against 8
    assert keyword_arm.parameter_weight_for_share(heads, parameters, 0.2) == pytest.approx(0.5)
    assert keyword_arm.parameter_weight_for_share(heads, parameters, 0.99) == 5.0  # capped
    assert keyword_arm.parameter_weight_for_share(heads, parameters, 0.01) == 0.25  # floored
    assert keyword_arm.parameter_weight_for_share(heads, ["", ""], 0.5) == 1.0  # no parameters: nothing to weigh


def test_parameter_share_ranks_through_the_index(tmp_path: Path) -> None:
    index = ToolIndex(OptimizerConfig(parameter_share=0.5), tmp_path)
    index.update_keywords(CATALOGUE)
    assert index.search("forecast in celsius").hits[0].record.name == "weather_forecast"
    with pytest.raises(ValidationError):
        OptimizerConfig(parameter_share=1.0)
