"""A task started during a workflow step that outlives the run (a backend session opened for the step's call,
in a task group of its own) inherits the step's context: what the executor keeps there for nested runs must
not be the run itself, or the run's parameters and every step's output stay in memory as long as that task.
Real tasks on the event loop; the run is freed or not (a weak reference, after a collection), no timing."""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import anyio
import mcp_types as types
import pytest

from vmcp_opt.config.workflows import WorkflowConfig
from vmcp_opt.workflows.executor import WorkflowRun

pytestmark = pytest.mark.anyio

BIG = "x" * 1_000_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def workflow(name: str, steps: list[dict[str, Any]]) -> WorkflowConfig:
    return WorkflowConfig.model_validate({"name": name, "description": "a test workflow", "steps": steps})


async def test_a_task_started_in_a_step_does_not_keep_the_ended_run_and_its_outputs() -> None:
    done = anyio.Event()
    async with anyio.create_task_group() as sessions:  # outlives the run, like a backend's session tasks

        async def call(tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
            sessions.start_soon(done.wait)  # copies the step's context, as a session opened here would
            return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps({"big": BIG}))])

        run = WorkflowRun(workflow("wf", [{"id": "a", "tool": "open_session"}]), {"p": BIG}, call)
        report = await run.run()
        assert report.ok, report.error
        freed = weakref.ref(run)
        del run, report
        gc.collect()
        try:
            assert freed() is None, [type(r).__name__ for r in gc.get_referrers(freed())]
        finally:
            done.set()


async def test_a_nested_run_still_charges_and_shares_the_enclosing_run_s_slots() -> None:
    inner_runs: list[WorkflowRun] = []

    async def call(tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        if tool == "inner":
            inner = WorkflowRun(workflow("inner", [{"id": "x", "tool": "echo"}, {"id": "y", "tool": "echo"}]), {}, call)
            inner_runs.append(inner)
            report = await inner.run()
            assert report.ok, report.error
        return types.CallToolResult(content=[types.TextContent(type="text", text="{}")])

    outer = WorkflowRun(workflow("outer", [{"id": "n", "tool": "inner"}]), {}, call)
    report = await outer.run()
    assert report.ok, report.error
    assert report.calls == 3  # its own step and the nested run's two
    assert inner_runs[0]._renders is outer._renders
