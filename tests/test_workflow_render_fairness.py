"""The `limits.workflow_renders` settings, in the real `vmcp validate` and the real `vmcp serve` over the real demo
backend with API keys: bounds out of order are refused with the field named, and with `total: 2,
per_caller: 2` two callers running many costly workflows at once, whose renders queue for both slots, do
not keep a third caller's run waiting behind their queue: it is given the first slot that frees.

Each costly item saves a note after its render, so the notes the backend holds count the costly renders
done; the cheap workflow counts them before and after its one templated step. Handed the first freed slot,
it waits while one costly render ends (two if the other running one ends in the few milliseconds its own
render and call take: each costly one takes far longer); behind a first-come queue it would wait for the
two queued costly renders to be given slots first, and so for at least three to end.

Renders sharing the gateway's threads share one GIL (and, on a busy machine, the cores), so each takes the
wall time of all of them: with `total: 8`, eight renders at once, each a fraction of a render's budget of
CPU time, must all succeed (a wall-clock budget failed every one of them, and failed the costly renders
above on a loaded machine)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, api_keys_file, bearer_client, demo_backend, running_gateway, write_config
from vmcp_opt.workflows import templates

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

RUNS = 3  # costly runs of each busy caller at once, each a for_each that would render 8 items at a time
SIZE = 1000  # nested loops of SIZE * SIZE template lines: most of a second of one core per item
ITEMS = 100  # more than the test waits for: the costly runs are still going when it ends them
CROWD = 8  # renders at once in the crowded run, a slot each: about 8 * 1.3 s of wall time each through one GIL
COSTLY_TEXT = f"{{% for i in range({SIZE}) %}}{{% for j in range({SIZE}) %}}{{% endfor %}}{{% endfor %}}x"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "costly",
        "description": "Saves a note per item, each text rendered through nested loops.",
        "parameters": {"type": "object", "properties": {"tag": {"type": "string"}}},
        "timeout": 600,  # ended by the test long before: a run timing out on a loaded machine failed the test
        "steps": [
            {
                "id": "each",
                "type": "for_each",
                "tool": "notes_save_note",
                "over": f"{{{{ range({ITEMS})|list }}}}",
                "max_parallel": 8,
                "arguments": {"title": "costly {{ params.tag }} {{ index }}", "text": COSTLY_TEXT},
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
RENDERS = {"total": 2, "per_caller": 2, "per_run": 1}
CROWDED: dict[str, Any] = {
    "name": "crowded",
    "description": "Saves CROWD notes at once, each text rendered through nested loops.",
    "timeout": 600,
    "steps": [
        {
            "id": "each",
            "type": "for_each",
            "tool": "notes_save_note",
            "over": f"{{{{ range({CROWD})|list }}}}",
            "max_parallel": CROWD,
            "arguments": {"title": "crowded {{ index }}", "text": COSTLY_TEXT},
        }
    ],
}
BUSY = ("busy1", "busy2")


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def notes(output: Any) -> int:
    """How many titles a `search_notes` step returned (structured as `{"result": [...]}`)."""
    return len(output["result"] if isinstance(output, dict) else output)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Gateway, dict[str, str]]]:
    keys = api_keys_file(tmp_path / "keys.json", {**{busy: ["users"] for busy in BUSY}, "other": ["users"]})
    config = {
        "backends": [demo_backend("notes")],
        "workflows": WORKFLOWS,
        "limits": {"workflow_renders": RENDERS},
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
    }
    with running_gateway(write_config(tmp_path, config), "--log-level", "warning") as running:
        yield running, keys


async def costly_notes_reach(client: Client, count: int) -> None:
    while True:
        found = await client.call_tool("notes_search_notes", {"query": "costly"})
        if notes(found.structured_content) >= count:
            return
        await anyio.sleep(0.05)


async def test_a_caller_waiting_behind_busy_callers_gets_the_first_freed_render_slot(
    gateway: tuple[Gateway, dict[str, str]],
) -> None:
    running, keys = gateway
    finished: list[types.CallToolResult] = []
    with anyio.fail_after(240):  # only against a hang: the costly runs outlast it whatever the machine's load
        async with (
            bearer_client(running.url, keys["busy1"]) as busy1,
            bearer_client(running.url, keys["busy2"]) as busy2,
            bearer_client(running.url, keys["other"]) as other,
            anyio.create_task_group() as group,
        ):

            async def costly_run(client: Client, tag: str) -> None:
                finished.append(await client.call_tool("costly", {"tag": tag}))

            for run in range(RUNS):
                group.start_soon(costly_run, busy1, f"a{run}")
                group.start_soon(costly_run, busy2, f"b{run}")
            await costly_notes_reach(other, 2)  # the busy callers' renders hold both slots and queue by now
            result = await other.call_tool("cheap", {})
            assert not finished, "the costly runs ended before the cheap one was measured"
            group.cancel_scope.cancel()
    assert not result.is_error, text(result)
    counts = result.structured_content
    assert counts is not None
    waited_for = notes(counts["after"]) - notes(counts["before"])
    assert waited_for <= 2, f"the cheap workflow waited while {waited_for} costly renders finished"


@pytest.fixture
def crowded_gateway(tmp_path: Path) -> Iterator[Gateway]:
    config = {
        "backends": [demo_backend("notes")],
        "workflows": [CROWDED],
        "limits": {"workflow_renders": {"total": CROWD, "per_caller": CROWD, "per_run": CROWD}},
    }
    with running_gateway(write_config(tmp_path, config), "--log-level", "warning") as running:
        yield running


async def test_renders_running_at_once_each_get_their_whole_budget_of_cpu_time(crowded_gateway: Gateway) -> None:
    with anyio.fail_after(240):  # only against a hang
        async with Client(crowded_gateway.url) as client:
            result = await client.call_tool("crowded", {})
            saved = await client.call_tool("notes_search_notes", {"query": "crowded"})
    assert not result.is_error, text(result)
    assert notes(saved.structured_content) == CROWD


def test_a_render_past_its_budget_of_cpu_time_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget still bounds a render that would run for hours (long before its `MAX_WORK` would)."""
    monkeypatch.setattr(templates, "MAX_RENDER_SECONDS", 0.3)
    endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(templates.TemplateError, match=r"computed for more than 0\.3s"):
        templates.render_value(endless, {}, "text")


def test_validate_refuses_render_bounds_out_of_order(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"limits": {"workflow_renders": {"total": 2, "per_caller": 2, "per_run": 3}}})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0, done.stdout
    output = done.stdout + done.stderr
    assert "limits.workflow_renders: per_run (3) is more than per_caller (2)" in output, output
    assert "per_run <= per_caller <= total" in output and "Traceback" not in output, output


def test_validate_names_a_defaulted_bound_that_an_explicit_total_undercuts(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"limits": {"workflow_renders": {"total": 2, "per_run": 3}}})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "per_caller (4, the default) is more than total (2)" in output, output
    assert "per_run (3) is more than total (2)" in output, output
