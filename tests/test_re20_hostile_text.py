"""Text a backend or a client controls never makes one of our regular expressions backtrack for long.

Each pattern below held the GIL (the whole gateway, health checks included) for a time that grew as the square
of its input, or worse:
- a tool description with a long run of spaces in a `:param` line or an `Args:` entry (optimizer/docstrings.py,
  read for every find_tool answer): 32,000 spaces made one find_tool take 38 s, a megabyte hours;
- the same in a parameter description (optimizer/documents.py `_EXAMPLE_VALUES`, read to index the tool);
- a schema `pattern` with nested counts (pattern_engines.py): `regex` unrolled `(?:(?:a{1000}){1000}){1000}`
  into a billion steps (the process killed for its memory); one level less, a million (0.5 s and 270 MB);
- a `%` form with a mapping key in nested parentheses passed its width unseen (workflows/templates.py);
- a jsonschema message of quotes never closed (argument_messages.py `respell`).
A real `vmcp serve` over a real stdio backend (the script below), asked by the SDK client, where the text comes
from a backend; the parsers themselves where it comes from a message or a template.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import Gateway, running_gateway, write_config
from vmcp_opt.argument_messages import respell
from vmcp_opt.workflows.templates import TemplateError, render_string

pytestmark = pytest.mark.slow

# Seconds each hostile case may take: far above what it takes now (milliseconds), far below what it took before
# (38 s for 32,000 spaces; these have 40,000, five times over).
DEADLINE = 30.0
# The same for the parsers alone: each input below took from 30 s to minutes, and takes milliseconds.
PARSER_DEADLINE = 10.0
# 40,000: each tool stays under the 256 KB past which the gateway drops a tool's definition (backends/listing.py
# `MAX_TOOL_CHARS`), and still far past the 32,000 spaces that took 38 s before.
SPACES = " " * 40_000
# `regex` unrolls this a million steps (0.5 s, 270 MB, then a refusal: "b" is no million b's); over the budget,
# it is left to the backend, which answers.
NESTED_COUNTS = "^(?:b{1000}){1000}$"

BACKEND = f"""
import json, sys

DESCRIPTION = "Save a note.\\n:param a{SPACES}b{SPACES}\\nArgs:\\n    text{SPACES}x\\n    title (str{SPACES}\\n"
DESCRIPTION += "Returns{SPACES}x\\n"
TOOLS = [
    {{"name": "save", "description": DESCRIPTION, "inputSchema": {{"type": "object", "properties": {{
        "text": {{"type": "string", "description": "The text{SPACES}of the note (e.g. hello)"}}}}}}}},
    {{"name": "title", "description": "Title a note.", "inputSchema": {{"type": "object", "properties": {{
        "title": {{"type": "string", "description": "Its title" + " (e.g." * 20000}}}}}}}},
    {{"name": "spell", "description": "Spell a word.", "inputSchema": {{"type": "object", "properties": {{
        "word": {{"type": "string", "pattern": {NESTED_COUNTS!r}}}}}}}}},
]
for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:
        continue
    method = message.get("method")
    if method == "initialize":
        result = {{"protocolVersion": message["params"]["protocolVersion"], "capabilities": {{"tools": {{}}}},
                   "serverInfo": {{"name": "hostile", "version": "1"}}}}
    elif method == "tools/list":
        result = {{"tools": TOOLS}}
    elif method == "tools/call":
        arguments = message["params"].get("arguments") or {{}}
        result = {{"content": [{{"type": "text", "text": "spelled " + str(arguments.get("word"))}}]}}
    else:
        result = {{}}
    sys.stdout.write(json.dumps({{"jsonrpc": "2.0", "id": message["id"], "result": result}}) + "\\n")
    sys.stdout.flush()
"""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    directory: Path = tmp_path_factory.mktemp("re20-hostile")
    script = directory / "hostile_backend.py"
    script.write_text(BACKEND, encoding="utf-8")
    config = {
        "backends": [{"name": "h", "command": sys.executable, "args": [str(script)]}],
        "optimizer": {"enabled": True, "index_dir": str(directory / "indexes"), "vector_wait": 0},
    }
    with running_gateway(write_config(directory, config), ready_timeout=DEADLINE) as running:
        yield running


@pytest.mark.anyio
async def test_find_tool_answers_at_once_over_descriptions_with_long_runs_of_spaces(gateway: Gateway) -> None:
    async with Client(streamable_http_client(gateway.url)) as client, httpx2.AsyncClient() as http:
        with anyio.fail_after(DEADLINE):
            result = await client.call_tool("find_tool", {"query": "save a note", "limit": 3})
            assert not result.is_error, result.content
            assert result.structured_content is not None
            found = {tool["name"]: tool for tool in result.structured_content["tools"]}
            assert found["h_save"]["description"] == "Save a note."
            assert (await http.get(f"{gateway.base}/healthz", timeout=10)).status_code == 200


@pytest.mark.anyio
async def test_a_pattern_with_nested_counts_is_left_to_the_backend_not_compiled(gateway: Gateway) -> None:
    async with Client(streamable_http_client(gateway.url)) as client:
        with anyio.fail_after(DEADLINE):
            result = await client.call_tool("call_tool", {"tool_name": "h_spell", "arguments": {"word": "b"}})
    assert not result.is_error, result.content
    assert result.content[0].text == "spelled b"  # type: ignore[union-attr]
    assert "left to the backend to enforce" in gateway.output()


def test_a_message_of_quotes_never_closed_is_respelled_in_one_pass() -> None:
    started = time.monotonic()
    assert respell('"\\' * 50_000) == '"\\' * 50_000  # 30 s before
    assert respell("'\\" * 50_000 + "x None") == "'\\" * 50_000 + "x None"  # all one string never closed
    assert time.monotonic() - started < PARSER_DEADLINE
    assert respell("Unevaluated properties are not allowed ('a', None were unexpected)") == (
        'Unevaluated properties are not allowed ("a", null were unexpected)'
    )


@pytest.mark.parametrize(
    "source",
    [
        '{{ "%(a(b)c)9999999s" % {"a(b)c": 1} }}',
        '{{ "%(a(b)c)9999999s" | format(**{"a(b)c": 1}) }}',
        '{{ "%(a(b))s %(x)9999999s" % {"a(b)": 1, "x": 2} }}',
        '{{ "%%(x %9999999d" % (1,) }}',  # `%%` is a literal percent: the field after it still counts
        '{{ "%%(x %*d" % (9999999, 1) }}',
    ],
)
def test_a_percent_width_after_a_key_in_nested_parentheses_is_bounded(source: str) -> None:
    with pytest.raises(TemplateError, match=r"width or precision (9999999 is )?past 1,000,000"):
        render_string(source, {}, "x")


def test_a_percent_form_of_keys_never_closed_is_read_once() -> None:
    started = time.monotonic()
    with pytest.raises(TemplateError):
        render_string("{{ f % 1 }}", {"f": "%(" * 200_000}, "x")  # 45 s before: `[^)]*` to the end from each `%(`
    assert time.monotonic() - started < PARSER_DEADLINE


def test_a_posix_class_in_a_set_does_not_hide_nested_counts_from_the_budget() -> None:
    from vmcp_opt.pattern_engines import compile_pattern

    # `[[:alpha:])]` is one set to `regex`; read as ending at the class's `]`, its `)` closed a group never open
    # and the counts after it went uncounted: 600**3 steps compiled, memory until the kernel stopped it.
    assert compile_pattern("(?:(?:(?:[[:alpha:])][[:alpha:])][[:alpha:])]a{600}){600}){600})") is None


def test_a_pattern_past_re2s_counts_is_still_checked_and_an_unchecked_key_pattern_constrains_nothing() -> None:
    from vmcp_opt.arguments import ArgumentError, ArgumentValidator

    checker = ArgumentValidator()
    long_hex = {"type": "object", "properties": {"h": {"type": "string", "pattern": "^[0-9a-f]{2100}$"}}}
    with pytest.raises(ArgumentError, match="does not match"):  # `regex` takes the count RE2 does not
        checker.check("t", long_hex, {"h": "zz"})
    checker.check("t", long_hex, {"h": "a" * 2100})
    unchecked_keys = {"type": "object", "patternProperties": {"(?:(?:a{1000}){1000}){1000}": {"type": "integer"}}}
    checker.check("t", unchecked_keys, {"name": "foo"})  # not every key made an integer
