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
