"""find_tool's results keep what a call needs and drop the boilerplate generators stamp on every tool."""

from __future__ import annotations

import json

import mcp_types as types
from pydantic import TypeAdapter

from vmcp_opt.optimizer.answers import answer_description, compact_schema
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.index import SearchHit
from vmcp_opt.optimizer.meta_tool_forms import hit_json, tool_json
from vmcp_opt.optimizer.tokens import COUNT_BATCH, AnswerTokens, count_tokens, tools_list_tokens

# As mcp-server-git (pydantic) and server-memory (zod-to-json-schema) send them.
GIT_STATUS = {
    "type": "object",
    "properties": {"repo_path": {"title": "Repo Path", "type": "string"}},
    "required": ["repo_path"],
    "title": "statusArguments",
}
MEMORY = {
    "type": "object",
    "properties": {"query": {"type": "string", "description": "Text to match", "title": "Search words"}},
    "required": ["query"],
    "additionalProperties": False,
    "$schema": "http://json-schema.org/draft-07/schema#",
}
DOCSTRING = """Search the web.

Args:
    query: The search terms.
    count: How many results.

Returns:
    dict: the results

Example:
    >>> search(query="x")
"""


def test_generated_titles_and_the_schema_dialect_go_and_what_validates_a_call_stays() -> None:
    assert compact_schema(GIT_STATUS, "git_status", {}) == {
        "type": "object",
        "properties": {"repo_path": {"type": "string"}},
        "required": ["repo_path"],
    }
    compact = compact_schema(MEMORY, "search_nodes", {})
    assert "$schema" not in compact
    assert compact["additionalProperties"] is False and compact["required"] == ["query"]
    # A title that says more than the name is the author's: kept.
    assert compact["properties"]["query"]["title"] == "Search words"


def test_a_docstring_answer_keeps_its_summary_and_moves_argument_words_into_the_schema() -> None:
    description, documented = answer_description(DOCSTRING)
    assert description == "Search the web."
    schema = {"type": "object", "properties": {"query": {"type": "string"}, "count": {"description": "Max hits"}}}
    compact = compact_schema(schema, "search", documented)
    assert compact["properties"]["query"]["description"] == "The search terms."
    assert compact["properties"]["count"]["description"] == "Max hits"  # the schema's own words win


def test_find_tool_result_is_smaller_for_a_docstring_tool_and_unchanged_for_a_plain_one() -> None:
    noisy = ToolRecord(name="web_search", backend="web", description=DOCSTRING, input_schema=GIT_STATUS)
    plain_schema = {"type": "object", "properties": {"city": {"type": "string", "description": "City"}}}
    plain = ToolRecord(name="forecast", backend="weather", description="Weather forecast", input_schema=plain_schema)
    shown = hit_json(SearchHit(noisy, 0.5), {"web_search"})
    assert count_tokens(json.dumps(shown)) < count_tokens(json.dumps({**shown, "description": DOCSTRING}))
    assert hit_json(SearchHit(plain, 0.5), {"forecast"})["input_schema"] == plain_schema
    assert hit_json(SearchHit(plain, 0.5), {"forecast"})["description"] == "Weather forecast"


def test_answer_tokens_from_kept_parts_equal_tokenizing_the_whole_answer() -> None:
    """find_tool counts each tool part once (then by the part object) and tokenizes only the rests; a result
    that is not its part followed by keys of its own is counted whole."""
    records = [
        ToolRecord(name=name, backend="b", description=text) for name, text in (("f", "Forecast"), ("r", "Radar"))
    ]
    parts = [tool_json(record) for record in records]
    results = [{**part, "score": 0.25, "supplies": {"tool": "r", "argument": "id"}} for part in parts]
    counter = AnswerTokens()
    expected = count_tokens(json.dumps(results, ensure_ascii=False))
    assert counter.count(results, parts) == expected  # counted, kept
    assert counter.count(results, parts) == expected  # from the kept parts
    changed = [{**results[0], "description": "Forecast for a whole week, by the hour"}, results[1]]
    assert counter.count(changed, parts) == count_tokens(json.dumps(changed, ensure_ascii=False))
    bare = [dict(parts[0]), dict(parts[1])]  # no keys of their own: the rest is the closing brace
    assert counter.count(bare, parts) == count_tokens(json.dumps(bare, ensure_ascii=False))
    assert counter.count([], []) == count_tokens("[]")


def test_a_tool_list_counted_tool_by_tool_in_batches_equals_tokenizing_its_whole_json() -> None:
    """`tools_list_tokens` counts each tool's JSON in batches (one `encode` of a big list holds the GIL for
    seconds); the sum with the list's punctuation is the whole list's count, across batch boundaries."""
    shapes = [
        ("git_status", "Shows the working tree status", GIT_STATUS),
        ("search_nodes", "Naïve Suche: 検索", MEMORY),
    ]
    shapes.append(("web_search", DOCSTRING, {"type": "object", "properties": {"q": {"pattern": "^[a-z]{2,}$"}}}))
    tools = [
        types.Tool(name=f"{name}_{i}", description=text, input_schema=schema)
        for i in range(COUNT_BATCH + 50)
        for name, text, schema in shapes
    ]
    assert len(tools) > 2 * COUNT_BATCH

    def wire_json(tools: list[types.Tool]) -> str:  # the whole list, as tools/list puts it on the wire
        return TypeAdapter(list[types.Tool]).dump_json(tools, by_alias=True, exclude_none=True).decode()

    assert "検索" in wire_json(tools[:3])  # as written, not escaped

    assert tools_list_tokens(tools) == count_tokens(wire_json(tools))
    assert tools_list_tokens(tools[:1]) == count_tokens(wire_json(tools[:1]))
    assert tools_list_tokens([]) == count_tokens("[]")
