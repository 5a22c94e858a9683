"""The meta-tools as clients see them: their definitions, how their arguments are read (the string forms
string-only clients send), and how one search hit is written into find_tool's answer."""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from collections.abc import Collection
from typing import Any

import mcp_types as types

from vmcp_opt.argument_sendable import unsendable_field
from vmcp_opt.arguments import ArgumentError
from vmcp_opt.optimizer.answers import answer_description, compact_schema
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.index import SearchHit

# A find_tool query's most characters. A request is a sentence or a few (the held-out sets' p95 is 137 tokens,
# ~600 characters) and the model reads the first 256 tokens of each text it embeds (the request and up to
# `optimizer.max_intents` intents); past this it is a pasted document, all of it keyword-tokenized, split and
# echoed in the answer. In the schema as `maxLength`, so clients see it.
MAX_QUERY_CHARS = 4096
# A find_tool `backends` filter's most names: more than any gateway has backends (a client naming them all can leave
# the filter out). 300k names took ~0.75 s of schema check; each name is looked up in the catalogue too.
MAX_BACKEND_FILTER = 1000
# Unicode's control and format characters (zero-width spaces and joiners, the byte-order mark, bidi marks).
_INVISIBLE = frozenset({"Cc", "Cf"})

FIND_TOOL = types.Tool(
    name="find_tool",
    title="Find tools",
    description=(
        "Search every tool behind this gateway by what you need done, in plain words. Returns the best "
        "matches with their names, descriptions, input schemas and a score from 0 to 1 (how well each "
        "matches: weak matches are marked, and nothing_fits says none fits); run one with call_tool. "
        "Search again with other words if nothing fits."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "query": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_QUERY_CHARS,
                "description": "What you need done, e.g. 'current time in Tokyo'.",
            },
            # Null as omitted, for every optional field: clients that must send every field (OpenAI's strict
            # function calling) send null for the ones they leave out.
            "limit": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": 50,
                "default": 8,
                "description": "How many tools to return.",
            },
            "backends": {
                "type": ["array", "null"],
                "items": {"type": "string"},
                "maxItems": MAX_BACKEND_FILTER,
                "description": "Only search these backends (servers); all when omitted.",
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    },
    annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
)

CALL_TOOL = types.Tool(
    name="call_tool",
    title="Call a tool",
    description=(
        "Run a tool found with find_tool: give its exact name and its arguments as an object matching the "
        "tool's input schema. Returns the tool's own result."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "tool_name": {"type": "string", "minLength": 1, "description": "The tool's name as find_tool returned it."},
            "arguments": {"type": ["object", "null"], "description": "The tool's arguments.", "default": {}},
        },
        "required": ["tool_name"],
        "additionalProperties": False,
    },
)

META_TOOLS = (FIND_TOOL, CALL_TOOL)
META_TOOL_NAMES = frozenset(tool.name for tool in META_TOOLS)
# A policy asked tool by tool (not a BatchPolicy): find_tool looks this much deeper for enough allowed ones.


def tool_json(record: ToolRecord) -> dict[str, Any]:
    """What a find_tool result says of its tool, whatever the query: the start of every result for it. A
    docstring description gives its summary, its argument words move into the schema's bare properties, and
    generator boilerplate is dropped (optimizer/answers.py)."""
    description, documented = answer_description(record.description)
    return {
        "name": record.name,
        "backend": record.backend,
        "description": description,
        "input_schema": compact_schema(record.input_schema, record.original_name or record.name, documented),
    }


class ToolParts:
    """`tool_json` per record, kept: find_tool shows the same tools again and again, and reading a docstring
    and compacting a schema for each of 8 hits was half of the answer's cost. Keyed by the record object
    (an index snapshot's records live until the catalogue changes; a changed tool comes as a new record),
    holding it so its id is not reused; at most `max_tools`, the oldest dropped first. A catalogue's parts are
    all built once its vectors are ready, when their tokens are counted (`MetaTools._warm_answer_tokens`): at
    10k tools most hits were not kept, and building 8 cost ~0.2 ms an answer (+~1 KB a tool). Shared:
    callers copy before adding to one (`hit_json`). Thread-safe: answers are built on worker threads."""

    def __init__(self, max_tools: int = 20_000) -> None:
        self.max_tools = max_tools
        self._parts: dict[int, tuple[ToolRecord, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def of(self, record: ToolRecord) -> dict[str, Any]:
        kept = self._parts.get(id(record))
        if kept is not None and kept[0] is record:
            return kept[1]
        part = tool_json(record)
        with self._lock:
            if len(self._parts) >= self.max_tools:
                self._parts.pop(next(iter(self._parts)), None)
            self._parts[id(record)] = (record, part)
        return part


def hit_json(hit: SearchHit, answer: Collection[str], part: dict[str, Any] | None = None) -> dict[str, Any]:
    """One result; `used_with` and `supplies` only when the tool they name is in the `answer` too. `part`:
    the record's `tool_json` when the caller has it (not changed here)."""
    found = dict(part) if part is not None else tool_json(hit.record)
    found["score"] = round(hit.score, 4)
    if hit.used_with and hit.used_with in answer:
        # Here mostly because past tasks used it with that result: the agent may need both.
        found["used_with"] = hit.used_with
    if hit.supplies and hit.supplies[0] in answer:
        # Issues a value a result requires (its token, its channel id): call this one first.
        found["supplies"] = {"tool": hit.supplies[0], "argument": hit.supplies[1]}
    return found


def query_problem(query: str) -> str | None:
    """What makes `query` unsearchable (too long, empty, only spaces or invisible characters), or None.
    Bounded work whatever its length: the length first, then a scan that stops at the first visible
    character."""
    if len(query) > MAX_QUERY_CHARS:
        return f"{len(query):,} characters, over the maximum of {MAX_QUERY_CHARS:,}; say what you need in fewer words"
    if all(char.isspace() or unicodedata.category(char) in _INVISIBLE for char in query):
        # Zero-width spaces or control characters alone were searched: one token, and weak matches
        # ranked as if they meant something.
        return "empty; say what you need done, e.g. 'current time in Tokyo'"
    return None


def check_sizes(arguments: dict[str, Any]) -> None:
    """find_tool's `query` and the length of its `backends`, checked in O(1) before its schema is (a non-string,
    a non-list left for the schema check to name): the schema check of a long string would copy it into its
    message, and that of a long list would walk all of it."""
    query = arguments.get("query")
    problem = query_problem(query) if isinstance(query, str) else None
    if problem is not None:
        raise ArgumentError(f"invalid arguments for tool 'find_tool': field 'query': {problem}")
    backends = arguments.get("backends")
    if isinstance(backends, list) and len(backends) > MAX_BACKEND_FILTER:
        raise ArgumentError(
            f"invalid arguments for tool 'find_tool': field 'backends': {len(backends):,} names, over the maximum of "
            f"{MAX_BACKEND_FILTER:,}; leave it out to search every backend"
        )


def coerce_strings(arguments: dict[str, Any]) -> dict[str, Any]:
    """Accept the string forms that string-only clients send (the inspector CLI's `--tool-arg k=v`).

    `arguments` as a JSON object in a string, `limit` as ASCII digits (or an integral number such as 3.0),
    `backends` as a JSON list or a comma-separated string. Anything else is left for the schema check to name.
    """
    coerced = dict(arguments)
    raw = coerced.get("arguments")
    if isinstance(raw, str):
        coerced["arguments"] = _json_field(raw, "call_tool", "arguments", "a JSON object") if raw.strip() else {}
    limit = coerced.get("limit")
    if isinstance(limit, str) and _DIGITS.fullmatch(limit):
        coerced["limit"] = int(limit)
    elif isinstance(limit, float) and limit.is_integer():
        coerced["limit"] = int(limit)  # the schema's `integer` admits 3.0, but it would not index a list
    backends = coerced.get("backends")
    if isinstance(backends, str):
        text = backends.strip()
        coerced["backends"] = (
            _json_field(text, "find_tool", "backends", "a JSON list")
            if text.startswith("[")
            else [b.strip() for b in text.split(",") if b.strip()]
        )
    return coerced


# Digits as a client types them: `str.isdigit` also takes "²" and "٣", which `int` refuses or reads as 3.
_DIGITS = re.compile(r"\s*[0-9]{1,9}\s*", re.ASCII)


def _json_field(text: str, tool: str, field: str, expected: str) -> Any:
    """`text` decoded, or an ArgumentError naming the field: not JSON, or what no request can carry (`json.loads`
    takes any depth up to its recursion limit, and lone surrogates: `unsendable_field`)."""
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"field '{field}': not {expected} ({exc})"
    except RecursionError:
        problem = f"field '{field}': not {expected}: nested too deeply"
    else:
        unsendable = unsendable_field({field: decoded})
        if unsendable is None:
            return decoded
        problem = unsendable
    raise ArgumentError(f"invalid arguments for tool '{tool}': {problem}")
