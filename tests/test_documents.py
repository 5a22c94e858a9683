"""The documents each arm indexes (optimizer/documents.py)."""

from __future__ import annotations

from pathlib import Path

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.documents import ToolRecord, keyword_document, tool_document
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
            "notes": {"type": "string", "description": LONG},
        },
    },
)


def test_keyword_document_repeats_each_parameter_line() -> None:
    document = keyword_document(CITY, parameter_weight=2)
    assert document.count("city: City name (e.g. 'Lyon', 'Osaka')") == 2
    assert document.count("Forecast for the next days") == 1
    assert keyword_document(CITY, parameter_weight=1).count("city: City name") == 1


def test_keyword_document_keeps_what_the_vector_document_cuts() -> None:
    vector = tool_document(CITY)
    keyword = keyword_document(CITY)
    assert "Lyon" not in vector and "Lyon" in keyword
    assert LONG.strip() in keyword and LONG.strip() not in vector


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


def test_a_value_named_only_in_a_parameter_ranks_its_tool_by_keywords(tmp_path: Path) -> None:
    other = ToolRecord(name="stock_quote", backend="finance", description="Quote of a stock in a city exchange")
    index = ToolIndex(OptimizerConfig(), tmp_path)
    index.update_keywords([other, CITY])
    hits = index.search("forecast for Osaka").hits
    assert hits[0].record.name == "weather_forecast"
