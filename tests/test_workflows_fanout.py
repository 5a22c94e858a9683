"""A workflow run's calls in all, nested runs included, in the real `vmcp serve` over the real demo backend:
a for_each whose tool is a workflow with its own for_each multiplies, and the outermost run's call budget
(`workflows[].max_calls`; 1,000 when the workflow does not say) bounds the whole tree. Every call the
backend sees saves a note with a title of its own, so the notes it holds count the calls that reached it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

DEFAULT_CALLS = 1000  # vmcp_opt.workflows.budget.MAX_RUN_CALLS: none of these workflows sets max_calls


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


INNER_PARAMETERS = {"type": "object", "properties": {"items": {"type": "array"}, "tag": {"type": "string"}}}
OUTER_PARAMETERS = {"type": "object", "properties": {"n": {"type": "integer"}, "tag": {"type": "string"}}}

WORKFLOWS: list[dict[str, Any]] = [
    {  # one note per item: each a backend call
        "name": "inner",
        "description": "Saves a note per item.",
        "parameters": INNER_PARAMETERS,
        "steps": [
            {
                "id": "each",
                "type": "for_each",
                "tool": "notes_save_note",
                "over": "{{ params['items'] }}",
                "max_iterations": 10_000,
                "arguments": {"title": "{{ params.tag }}_{{ item }}", "text": "x"},
            }
        ],
    },
    {  # the backend returns a list of n; for each of its items, `inner` over the whole list: n + n * n calls
        "name": "outer",
        "description": "Fans out twice over a list a backend returns.",
        "parameters": OUTER_PARAMETERS,
        "steps": [
            {
                "id": "list",
                "tool": "notes_slow_echo",
                "arguments": {"message": "{{ range(params.n)|list|tojson }}", "seconds": 0},
            },
            {
                "id": "fan",
                "type": "for_each",
                "tool": "inner",
                "depends_on": ["list"],
                "over": "{{ steps.list.output.result }}",
                "arguments": {"items": "{{ steps.list.output.result|fromjson }}", "tag": "{{ params.tag }}_{{ item }}"},
            },
        ],
    },
    {  # a budget of its own: 5 calls
        "name": "inner_five",
        "description": "Saves a note per item, at most five calls a run.",
        "parameters": INNER_PARAMETERS,
        "max_calls": 5,
        "steps": [
            {
                "id": "each",
                "type": "for_each",
                "tool": "notes_save_note",
                "over": "{{ params['items'] }}",
                "arguments": {"title": "{{ params.tag }}_{{ item }}", "text": "x"},
            }
        ],
    },
    {  # one item, but a workflow whose for_each takes up to 10,000: outer_one's budget is what bounds it
        "name": "outer_one",
        "description": "Runs inner once over a list of n.",
        "parameters": OUTER_PARAMETERS,
        "steps": [
            {
                "id": "once",
                "type": "for_each",
                "tool": "inner",
                "over": "[0]",
                "arguments": {"items": "{{ range(params.n)|list }}", "tag": "{{ params.tag }}"},
            }
        ],
    },
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("workflow-fanout")
    config = {"backends": [demo_backend("notes")], "workflows": WORKFLOWS}
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def saved(client: Client, tag: str) -> int:
    """The notes the backend holds under `tag`: the calls of a run tagged so that reached it."""
    found = await client.call_tool("notes_search_notes", {"query": tag})
    assert not found.is_error, text(found)
    assert found.structured_content is not None
    titles: list[str] = found.structured_content["result"]
    return len([title for title in titles if title.startswith(f"{tag}_")])


async def test_a_nested_fan_out_within_the_budget_completes(gateway: Gateway) -> None:
    with anyio.fail_after(60):
        async with Client(gateway.url) as client:
            result = await client.call_tool("outer", {"n": 20, "tag": "alpha"})  # 1 + 20 + 400 calls
            notes = await saved(client, "alpha")
    assert not result.is_error, text(result)
    assert len(json.loads(text(result))) == 20
    assert notes == 400


async def test_a_nested_fan_out_past_the_budget_stops_there_naming_the_setting_and_the_steps(
    gateway: Gateway,
) -> None:
    with anyio.fail_after(60):
        async with Client(gateway.url) as client:
            result = await client.call_tool("outer", {"n": 40, "tag": "bravo"})  # 1 + 40 + 1,600 calls asked
            notes = await saved(client, "bravo")
            after = await client.call_tool("notes_whoami", {})
    message = text(result)
    assert result.is_error
    assert message.startswith("workflow 'outer' failed: step 'fan' failed: item ")
    assert "workflow 'inner' failed: step 'each' failed: " in message
    # Refused either call by call or, when fewer calls are left than items, before the fan-out starts.
    assert "workflow 'outer' has made the 1,000 calls" in message or "workflow 'outer' may make only" in message
    assert "the calls of workflows it runs included (workflows[].max_calls" in message
    assert "steps: list: ok, fan: failed" in message
    # What reached the backend: under the budget (less the list and the calls of `inner` itself), not 1,600.
    assert 0 < notes < DEFAULT_CALLS
    assert not after.is_error  # the gateway goes on serving


async def test_a_fan_out_larger_than_the_calls_left_is_refused_before_any_item_runs(gateway: Gateway) -> None:
    with anyio.fail_after(60):
        async with Client(gateway.url) as client:
            result = await client.call_tool("outer_one", {"n": 1500, "tag": "charlie"})
            notes = await saved(client, "charlie")
            within = await client.call_tool("outer_one", {"n": 50, "tag": "delta"})
            done = await saved(client, "delta")
    assert result.is_error
    assert text(result).startswith(
        "workflow 'outer_one' failed: step 'once' failed: item 0: workflow 'inner' failed: step 'each' failed: "
        "over: 1,500 items, but workflow 'outer_one' may make only 999 more calls in this run, "
        "the calls of workflows it runs included (workflows[].max_calls, 1,000)"
    )
    assert notes == 0  # nothing half done
    assert not within.is_error, text(within)
    assert done == 50


def test_vmcp_workflow_run_counts_the_calls_of_nested_runs(tmp_path: Any) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "workflows": WORKFLOWS})
    command = [sys.executable, "-m", "vmcp_opt", "workflow", "run", "outer", "-c", str(config)]
    result = subprocess.run(
        [*command, "--arg", "n=3", "--arg", "tag=echo", "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["calls"] == 1 + 3 + 9  # the list, inner three times, three notes in each


async def test_a_workflows_own_max_calls_bounds_its_run(gateway: Gateway) -> None:
    with anyio.fail_after(60):
        async with Client(gateway.url) as client:
            refused = await client.call_tool("inner_five", {"items": list(range(10)), "tag": "foxtrot"})
            refused_notes = await saved(client, "foxtrot")
            done = await client.call_tool("inner_five", {"items": list(range(5)), "tag": "golf"})
            done_notes = await saved(client, "golf")
    assert refused.is_error
    assert text(refused).startswith(
        "workflow 'inner_five' failed: step 'each' failed: over: 10 items, but workflow 'inner_five' may make "
        "only 5 more calls in this run, the calls of workflows it runs included (workflows[].max_calls, 5)"
    )
    assert refused_notes == 0
    assert not done.is_error, text(done)
    assert done_notes == 5
