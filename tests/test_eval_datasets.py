"""Dataset loaders: a BEIR directory (plain and with MCP metadata), ToolLens rows, ToolRet fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.datasets import DatasetError, expand_names, load_dataset, toollens_fields
from eval.toolret import toolret_fields


def write_beir(root: Path, rows: list[dict[str, object]], queries: dict[str, str], qrels: list[str]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": k, "text": v}) for k, v in queries.items()))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    return root


def test_beir_loader_reads_corpus_queries_and_qrels(tmp_path: Path) -> None:
    root = write_beir(
        tmp_path / "tiny",
        [
            {"_id": "t1", "title": "Weather", "text": "forecast for a city"},
            {"_id": "t2", "title": "", "text": "send an email"},
        ],
        {"q1": "weather in paris", "q2": "mail bob", "q3": "unjudged"},
        ["q1\tt1\t1", "q2\tt2\t2", "q2\tmissing\t1", "q3\tt1\t0"],
    )
    dataset = load_dataset(str(root))
    assert dataset.name == "tiny"
    assert [tool.id for tool in dataset.tools] == ["t1", "t2"]
    assert dataset.tools[0].text == "Weather\nforecast for a city"
    assert dataset.tools[0].fields.name == "Weather"
    assert dataset.tools[1].fields.name == "t2"  # no title: the id names it
    # Unknown tools and zero scores are dropped; a query left with nothing is not judged.
    assert dataset.qrels == {"q1": {"t1": 1}, "q2": {"t2": 2}}
    assert dataset.judged_queries() == [("q1", "weather in paris"), ("q2", "mail bob")]
    assert dataset.limited(1).judged_queries()[0][0] in {"q1", "q2"}


def test_beir_rows_with_mcp_metadata_become_gateway_tools(tmp_path: Path) -> None:
    metadata = {
        "name": "time_get_current_time",
        "backend": "time",
        "backend_description": "Time and timezone tools",
        "input_schema": {"type": "object", "properties": {"timezone": {"type": "string"}}},
        "original_name": "get_current_time",
    }
    root = write_beir(
        tmp_path / "mcp",
        [{"_id": "1", "title": "", "text": "Get the current time in a timezone", "metadata": metadata}],
        {"q": "what time is it"},
        ["q\t1\t1"],
    )
    tool = load_dataset(str(root)).tools[0]
    assert tool.mcp
    assert tool.fields.backend == "time"
    assert tool.fields.description == "Get the current time in a timezone"
    record = tool.fields.to_record()
    assert record.input_schema["properties"]["timezone"] == {"type": "string"}


def test_beir_loader_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"corpus\.jsonl"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="neither a bundled dataset"):
        load_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="ToolLens"):
        load_dataset("toollens", data_dir=tmp_path)


def test_all_expands_to_every_bundled_set_once() -> None:
    assert expand_names(["apibank", "all"]) == ["apibank", "toollens", "apigen", "gorilla-huggingface", "toolink"]


def test_toollens_text_splits_into_backend_tool_and_parameters() -> None:
    text = (
        "category_name:Food, tool_name:Worldwide Recipes, api_name:Suggestions, api_description:Get Suggestions, "
        'required_params: [{"name": "q", "type": "STRING", "description": "query"}], '
        'optional_params: [{"name": "limit", "type": "NUMBER", "description": ""}], return_schema: {"a": "str"}'
    )
    fields = toollens_fields({"_id": "0", "text": text})
    assert fields.name == "worldwide_recipes_suggestions"
    assert fields.backend == "worldwide_recipes"
    assert fields.original_name == "Suggestions"
    assert fields.description == "Get Suggestions"
    assert fields.backend_description == "Worldwide Recipes (Food)"
    assert fields.input_schema["required"] == ["q"]
    assert fields.input_schema["properties"]["limit"]["type"] == "number"


def test_toolret_fields_per_task() -> None:
    gorilla = toolret_fields(
        "gorilla-huggingface",
        {"name": "org/model", "description": "A model.", "functionality": "Language Identification", "domain": "Audio"},
    )
    assert (gorilla.name, gorilla.title, gorilla.backend) == ("org/model", "Language Identification", "audio")
    toolink = toolret_fields("toolink", {"name": "mul", "description": "d", "func_description": "def mul(a, b=2):"})
    assert list(toolink.input_schema["properties"]) == ["a", "b"]
    apibank = toolret_fields("apibank", {"name": "X", "description": '"quoted"', "parameters": [{"name": "date"}]})
    assert apibank.description == "quoted"
    assert "date" in apibank.input_schema["properties"]


def test_train_qrels_are_the_usage_history_and_never_hold_a_scored_query(tmp_path: Path) -> None:
    root = write_beir(
        tmp_path / "with-train",
        [{"_id": "t1", "title": "Weather", "text": "forecast"}, {"_id": "t2", "title": "Mail", "text": "send"}],
        {"q1": "weather", "a": "x", "b": "y", "c": "z"},
        ["q1\tt1\t1"],
    )
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\na\tt1\t1\na\tt2\t1\nb\tt2\t1\nc\tgone\t1\n")
    test = load_dataset(str(root))
    assert test.usage == {"a": ["t1", "t2"], "b": ["t2"]}  # unknown tools dropped, empty tasks too
    assert sorted(test.past_tasks()) == [["t1", "t2"], ["t2"]]
    # Scoring the training split: a scored query is never part of the history it is scored with.
    train = load_dataset(str(root), split="train").limited(1, seed=3)
    (scored,) = train.qrels
    assert len(train.past_tasks()) == 1 and train.usage[scored] not in train.past_tasks()
    assert load_dataset(str(root), split="train").past_tasks() == []
