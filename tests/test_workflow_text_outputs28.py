"""A step's JSON output of more values than limits.max_result_values stays its text (step_results.py, `read_json`).

Before: a template reading it as the JSON value it stands for read the text instead, with no error:
`{{ steps.a.output[0] }}` gave its first character, `| length` its character count, a `{% for %}` its characters,
and a for_each over it was refused with a reason that named neither the step nor the setting. Now every such read
fails its step with a reason naming the output, its values and the setting; the text used whole still passes.

A step's structured content is sized against limits.max_result_bytes in a worker thread once past 64 KB (a walk of
64 Ki values held the event loop ~100 ms): the last test checks it is still read and held to the cap that way.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support import Gateway, running_gateway, write_config
from vmcp_opt.workflows.step_results import MAX_JSON_VALUES

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

ROWS = 70_000  # `[]` in one JSON array: 140,000 values by its brackets and commas, past the 65,536 a step reads
BACKEND = f'''
import mcp_types as types
from mcp.server.mcpserver import MCPServer

server = MCPServer("text28")


@server.tool(structured_output=False)
def rows() -> str:
    """A JSON array of {ROWS:,} empty arrays, as text (its brackets sit in a string of the answer: not counted)."""
    return "[" + ",".join(["[]"] * {ROWS}) + "]"


@server.tool()
def fields(n: int) -> types.CallToolResult:
    """Structured content: an object of n integer fields, k0 to k<n-1> (its text a short note)."""
    structured = {{f"k{{i}}": i for i in range(n)}}
    return types.CallToolResult(content=[types.TextContent(type="text", text="ok")], structured_content=structured)


@server.tool(structured_output=False)
def echo(text: str) -> str:
    """The text back."""
    return text


server.run()
'''
CAP = 1_000_000  # limits.max_result_bytes
FIELDS = 40_000  # ~640 KB of structured content as the gateway sizes it: one step's is within CAP, two are not
KEPT = (
    f"steps.a.output is its text, not parsed: JSON of up to {2 * ROWS:,} values (by its brackets and commas), more "
    f"than the {MAX_JSON_VALUES:,} a workflow step reads"
)
# What each workflow's second step reads of step a's output, and how its failure begins.
READS = {
    "index_wf": ("{{ steps.a.output[0] }}", "cannot read item 0 of steps.a.output"),
    "field_wf": ("{{ steps.a.output.rows }}", "cannot read field 'rows' of steps.a.output"),
    "length_wf": ("{{ steps.a.output | length }} rows", "cannot apply the filter 'length' to steps.a.output"),
    "loop_wf": ("{% for row in steps.a.output %}.{% endfor %}", "cannot iterate over steps.a.output"),
}


def two_steps(name: str, second: dict[str, Any], output: dict[str, Any] | None = None) -> dict[str, Any]:
    workflow = {
        "name": name,
        "description": f"{name}: rows, then a step reading them.",
        "steps": [{"id": "a", "tool": "be_rows"}, {"id": "b", "depends_on": ["a"], **second}],
    }
    return workflow | ({"output": output} if output is not None else {})


WORKFLOWS = [
    *(two_steps(name, {"tool": "be_echo", "arguments": {"text": read}}) for name, (read, _) in READS.items()),
    two_steps("each_wf", {"type": "for_each", "tool": "be_echo", "over": "{{ steps.a.output }}", "arguments": {}}),
    two_steps("whole_wf", {"tool": "be_echo", "arguments": {"text": "{{ steps.a.output }}"}}),
    {
        "name": "fields_wf",
        "description": "The last field and the count of a large structured content.",
        "steps": [{"id": "a", "tool": "be_fields", "arguments": {"n": FIELDS}}],
        "output": {"last": f"{{{{ steps.a.output.k{FIELDS - 1} }}}}", "n": "{{ steps.a.output | length }}"},
    },
    {
        "name": "fields_twice_wf",
        "description": "Two large structured contents, one after the other.",
        "steps": [
            {"id": "a", "tool": "be_fields", "arguments": {"n": FIELDS}},
            {"id": "b", "tool": "be_fields", "arguments": {"n": FIELDS}, "depends_on": ["a"]},
        ],
    },
    two_steps(
        "framed_wf",
        {"tool": "be_echo", "arguments": {"text": "<{{ steps.a.output }}>"}},
        output={"echoed": "{{ steps.b.output | string | length }}"},
    ),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("text-outputs28")
    script = directory / "text28_backend.py"
    script.write_text(BACKEND, encoding="utf-8")
    backend = {"name": "be", "command": sys.executable, "args": [str(script)]}
    config = {"backends": [backend], "workflows": WORKFLOWS, "limits": {"max_result_bytes": CAP}}
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def call(gateway: Gateway, tool: str) -> types.CallToolResult:
    with anyio.fail_after(120):
        http = httpx2.AsyncClient(timeout=120)
        async with Client(streamable_http_client(gateway.url, http_client=http)) as client:
            return await client.call_tool(tool, {})


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.parametrize("workflow", list(READS))
async def test_reading_a_kept_text_as_json_fails_naming_the_step_its_values_and_the_setting(
    gateway: Gateway, workflow: str
) -> None:
    result = await call(gateway, workflow)
    assert result.is_error, text(result)[:300]
    reason = text(result)
    assert reason.startswith(
        f"workflow '{workflow}' failed: step 'b' failed: arguments.text: {READS[workflow][1]}: it is kept as its JSON "
        f"text, unparsed, past limits.max_result_values ({KEPT}); a template can use it only whole, as text"
    ), reason


async def test_a_for_each_over_a_kept_text_fails_naming_the_step_its_values_and_the_setting(gateway: Gateway) -> None:
    result = await call(gateway, "each_wf")
    assert result.is_error, text(result)[:300]
    assert text(result).startswith(
        "workflow 'each_wf' failed: step 'b' failed: over: cannot run a for_each over steps.a.output: it is kept as "
        f"its JSON text, unparsed, past limits.max_result_values ({KEPT})"
    ), text(result)


async def test_a_kept_text_used_whole_is_passed_as_it_came(gateway: Gateway) -> None:
    rows = "[" + ",".join(["[]"] * ROWS) + "]"
    whole = await call(gateway, "whole_wf")
    assert not whole.is_error, text(whole)[:300]
    same = text(whole) == rows  # (not compared by pytest: its diff of 210 KB)
    assert same, text(whole)[:80]
    framed = await call(gateway, "framed_wf")
    assert not framed.is_error, text(framed)[:300]
    assert framed.structured_content == {"echoed": len(rows) + 2}


async def test_a_large_structured_content_is_read_and_held_to_max_result_bytes(gateway: Gateway) -> None:
    read = await call(gateway, "fields_wf")
    assert not read.is_error, text(read)[:300]
    assert read.structured_content == {"last": FIELDS - 1, "n": FIELDS}
    twice = await call(gateway, "fields_twice_wf")
    assert twice.is_error
    assert text(twice).startswith(
        f"workflow 'fields_twice_wf' failed: step 'b' failed: the workflow's step outputs come to more than {CAP:,} "
        "bytes (limits.max_result_bytes)"
    ), text(twice)
