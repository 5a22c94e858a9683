"""Template renders' worker threads shared fairly, in the real `vmcp serve` over the real demo backend with
API keys: one client whose workflows' templates are costly (a for_each whose every item renders nested
loops it sizes by its arguments) must not keep another client's cheap workflow, nor its own next run, from
rendering. Each costly item then saves a note, so the notes the backend holds count the costly renders done;
the cheap workflow counts them before and after its one templated step, and the difference is the costly
renders that finished while it waited for a render slot: without per-run and per-caller slots it queues
behind the dozens of items waiting for the gateway's 8."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, api_keys_file, bearer_client, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

HEAVY_PARALLEL = 32  # items of one costly run rendering (or waiting to) at once: 4 times the gateway's slots
# Nested loops of SIZE * SIZE lines: about 0.1 s of one core each, well within a render's budget.
SIZE = 400
ITEMS = 400  # more than the test waits for: the costly runs are still going when it ends them
# Costly renders that may finish while a cheap render waits for its slot, when one is free for it: those
# already running that end meanwhile (4 at most hold slots of the costly caller), and those that end during the
# cheap run's own two backend calls around it (a few more on a loaded machine: 6 were seen under CI's two workers).
# Without the bounds it waits behind HEAVY_PARALLEL - 8 others of each costly run (24 and more).
SLACK = 10


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "costly",
        "description": "Saves a note per item, each text rendered through nested loops the arguments size.",
        "parameters": {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "size": {"type": "integer"}, "tag": {"type": "string"}},
        },
        "timeout": 600,  # ended by the test, long before: a run that timed out on a loaded machine failed the test
        "steps": [
            {
                "id": "each",
                "type": "for_each",
                "tool": "notes_save_note",
                "over": "{{ range(params.n)|list }}",
                "max_iterations": 1000,
                "max_parallel": HEAVY_PARALLEL,
                "arguments": {
                    "title": "costly {{ params.tag }} {{ index }}",
                    "text": "{% for i in range(params.size) %}{% for j in range(params.size) %}{% endfor %}"
                    "{% endfor %}x",
                },
            }
        ],
    },
    {
        "name": "cheap",
        "description": "Counts the costly notes, renders one trivial template, counts them again.",
        "steps": [
            {"id": "before", "tool": "notes_search_notes", "arguments": {"query": "costly"}},
            {
                "id": "after",
                "tool": "notes_search_notes",
                "depends_on": ["before"],
                "arguments": {"query": "{{ 'costly' }}"},
            },
        ],
        "output": {"before": "{{ steps.before.output }}", "after": "{{ steps.after.output }}"},
    },
]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Gateway, dict[str, str]]]:
    keys = api_keys_file(tmp_path / "keys.json", {"costly": ["users"], "cheap": ["users"]})
    config = {
        "backends": [demo_backend("notes")],
        "workflows": WORKFLOWS,
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
    }
    with running_gateway(write_config(tmp_path, config), "--log-level", "warning") as running:
        yield running, keys


def notes(output: Any) -> int:
    """How many titles a `search_notes` step returned (structured as `{"result": [...]}`)."""
    return len(output["result"] if isinstance(output, dict) else output)


async def costly_notes_reach(client: Client, count: int) -> None:
    """Polls the backend (under the caller's `fail_after`) until the costly runs have saved `count` notes."""
    while True:
        found = await client.call_tool("notes_search_notes", {"query": "costly"})
        if notes(found.structured_content) >= count:
            return
        await anyio.sleep(0.05)


async def costly_renders_while_waiting(gateway: Gateway, costly_key: str, cheap_key: str, runs: int) -> int:
    """Start `runs` costly runs as `costly_key`; once they render, run `cheap` as `cheap_key` and return how
    many costly renders finished while its templated step waited. The costly runs must still be going."""
    finished: list[types.CallToolResult] = []
    with anyio.fail_after(300):
        async with (
            bearer_client(gateway.url, costly_key) as costly,
            bearer_client(gateway.url, cheap_key) as cheap,
            anyio.create_task_group() as group,
        ):

            async def costly_run(tag: str) -> None:
                finished.append(await costly.call_tool("costly", {"n": ITEMS, "size": SIZE, "tag": tag}))

            for run in range(runs):
                group.start_soon(costly_run, str(run))
            await costly_notes_reach(cheap, 2)  # every slot the costly runs may take is taken by now
            result = await cheap.call_tool("cheap", {})
            assert not finished, "the costly runs ended before the cheap one was measured"
            group.cancel_scope.cancel()
    assert not result.is_error, text(result)
    counts = result.structured_content
    assert counts is not None
    return notes(counts["after"]) - notes(counts["before"])


async def test_a_caller_s_costly_renders_leave_other_callers_a_render_slot(
    gateway: tuple[Gateway, dict[str, str]],
) -> None:
    running, keys = gateway
    waited_for = await costly_renders_while_waiting(running, keys["costly"], keys["cheap"], runs=2)
    assert waited_for <= SLACK, f"the cheap workflow waited while {waited_for} costly renders finished"


async def test_one_run_s_for_each_leaves_its_own_caller_a_render_slot(gateway: tuple[Gateway, dict[str, str]]) -> None:
    running, keys = gateway
    waited_for = await costly_renders_while_waiting(running, keys["costly"], keys["costly"], runs=1)
    assert waited_for <= SLACK, f"the caller's next run waited while {waited_for} costly renders finished"
