"""A workflow step's JSON text is read on the event loop only up to a bound of values (step_results.py).

Before: a 3.9 MB "[[],[],…]" a client sent through a one-step workflow was parsed into 1.3 million lists and then
walked to size it and written again, all on the gateway's event loop: /healthz waited 2.7 s; a for_each over that
text was refused for max_iterations only after the parse. A backend's answer of that many values is now refused
where it is read (limits.max_result_values), but a step's text also comes from a workflow it calls, and `over`
from a client. Now a text of more values than `MAX_JSON_VALUES` (counted by its brackets and commas, at C speed)
stays text: passed on as it came, and a template reading fields of it fails naming the step and the bound; a
for_each over one is refused before any parsing.
"""

from __future__ import annotations

import sys
import threading
import time
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

BACKEND = '''
from mcp.server.mcpserver import MCPServer

server = MCPServer("loop27")


@server.tool(structured_output=False)
def echo_text(text: str) -> str:
    """The text back, as text content only."""
    return text


@server.tool(structured_output=False)
def json_rows(n: int) -> str:
    """An object whose `rows` are n empty arrays, as JSON text."""
    return '{"rows": [' + ",".join(["[]"] * n) + "]}"


@server.tool(structured_output=False)
def wide_ints(n: int) -> str:
    """A JSON array of n integers of 4,000 digits each."""
    return "[" + ",".join(["9" * 4000] * n) + "]"


@server.tool(structured_output=False)
def comma_doc(n: int) -> str:
    """A JSON document of three values whose body string holds n commas."""
    return '{"title": "Quarterly report", "body": "' + "x," * n + '"}'


server.run()
'''

PAYLOAD = "[" + ",".join(["[]"] * 1_300_000) + "]"  # 3.9 MB, under server.max_body_bytes (4 MiB)
ROWS = 700  # of each item of inner_wf's for_each: 1,400 values an answer, well under limits.max_result_values

WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "each_wf",
        "description": "A for_each over a JSON array given as text.",
        "parameters": {"type": "object", "properties": {"list": {"type": "string"}}},
        "steps": [
            {"id": "e", "type": "for_each", "tool": "be_echo_text", "over": "{{ params.list }}", "arguments": {}}
        ],
    },
    {
        "name": "inner_wf",
        "description": "Rows from the backend, `k` times: its result is their list, as JSON text.",
        "parameters": {"type": "object", "properties": {"k": {"type": "integer"}}},
        "steps": [
            {
                "id": "each",
                "type": "for_each",
                "tool": "be_json_rows",
                "over": "{{ range(params.k) | list }}",
                "arguments": {"n": ROWS},
                "max_parallel": 8,
            }
        ],
    },
    {
        "name": "outer_wf",
        "description": "Count the rows of inner_wf's first item in a second step.",
        "parameters": {"type": "object", "properties": {"k": {"type": "integer"}}},
        "steps": [
            {"id": "n", "tool": "inner_wf", "arguments": {"k": "{{ params.k }}"}},
            {
                "id": "count",
                "tool": "be_echo_text",
                "depends_on": ["n"],
                "arguments": {"text": "rows: {{ steps.n.output[0].rows | length }}"},
            },
        ],
    },
    {
        "name": "title_wf",
        "description": "The title of a document whose one string holds many commas.",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
        "steps": [{"id": "fetch", "tool": "be_comma_doc", "arguments": {"n": "{{ params.n }}"}}],
        "output": {"title": "{{ steps.fetch.output.title }}"},
    },
    {
        "name": "ints_wf",
        "description": "Wide integers from a backend, passed on.",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
        "steps": [{"id": "w", "tool": "be_wide_ints", "arguments": {"n": "{{ params.n }}"}}],
    },
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("workflow-loop27")
    script = directory / "loop27_backend.py"
    script.write_text(BACKEND, encoding="utf-8")
    backend = {"name": "be", "command": sys.executable, "args": [str(script)]}
    with running_gateway(write_config(directory, {"backends": [backend], "workflows": WORKFLOWS})) as running:
        yield running


async def call(gateway: Gateway, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
    with anyio.fail_after(120):
        http = httpx2.AsyncClient(timeout=120)
        async with Client(streamable_http_client(gateway.url, http_client=http)) as client:
            return await client.call_tool(tool, arguments)


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


class HealthPoller:
    """GETs /healthz one after another on a thread of its own; `worst` is the slowest answer (seconds)."""

    def __init__(self, base: str) -> None:
        self._base = base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.latencies: list[float] = []

    def _poll(self) -> None:
        with httpx2.Client(timeout=60) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                http.get(f"{self._base}/healthz")
                self.latencies.append(time.perf_counter() - started)
                self._stop.wait(0.01)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def worst(self) -> float:
        return max(self.latencies)


async def test_a_for_each_over_a_huge_json_text_is_refused_before_it_is_parsed(gateway: Gateway) -> None:
    await call(gateway, "be_echo_text", {"text": "warm"})  # the backend session is open before the poll starts
    with HealthPoller(gateway.base) as poller:
        result = await call(gateway, "each_wf", {"list": PAYLOAD})
    assert result.is_error
    reason = text(result)
    assert reason.startswith(
        "workflow 'each_wf' failed: step 'e' failed: over: JSON of up to 2,600,000 values (by its brackets and "
        f"commas), more than the {MAX_JSON_VALUES:,} a workflow step reads; a for_each takes at most "
        "max_iterations (100) items"
    ), reason
    # The one timed check, loose: the parse held the loop for 0.9-1.2 s, then refused for max_iterations.
    assert poller.latencies and poller.worst < 0.5, f"worst /healthz latency {poller.worst * 1000:.0f} ms"


async def test_reading_fields_of_a_workflow_s_huge_json_result_fails_naming_the_step_and_the_bound(
    gateway: Gateway,
) -> None:
    """A step calling a workflow gets its result as text (no backend answer, whose values the transport counts):
    10 items of rows, 14,000 values, are read as before; 100 items, 140,200 values, stay text."""
    small = await call(gateway, "outer_wf", {"k": 10})
    assert not small.is_error, text(small)[:300]
    assert text(small) == f"rows: {ROWS}"
    result = await call(gateway, "outer_wf", {"k": 100})
    assert result.is_error
    reason = text(result)
    assert reason.startswith("workflow 'outer_wf' failed: step 'count' failed: arguments.text: "), reason
    assert (
        "(steps.n.output is its text, not parsed: JSON of up to 140,200 values (by its brackets and commas), "
        f"more than the {MAX_JSON_VALUES:,} a workflow step reads)"
    ) in reason, reason


async def test_json_whose_wide_integers_cost_too_much_to_read_stays_text(gateway: Gateway) -> None:
    """From a backend: 2,000 integers of 4,000 digits are 2,001 values, but each costs about as much to read as a
    thousand `[]` (their digits are converted in quadratic time); parsed and written again they came back with
    ", " between them."""
    result = await call(gateway, "ints_wf", {"n": 2000})
    assert not result.is_error, text(result)[:300]
    passed_on = text(result) == "[" + ",".join(["9" * 4000] * 2000) + "]"  # (not compared by pytest: its diff)
    assert passed_on, text(result)[:80]


async def test_commas_inside_a_string_are_not_values(gateway: Gateway) -> None:
    """70,000 commas in one string: three values, read as before (the count past the bound skips strings, as
    limits.max_result_values counts a backend's answer); it was refused as 70,002."""
    result = await call(gateway, "title_wf", {"n": 70_000})
    assert not result.is_error, text(result)[:300]
    assert result.structured_content == {"title": "Quarterly report"}
