"""Step results a workflow run holds are charged to its caller's bound (`limits.held_answer_bytes`,
workflows/budget.py `HeldOutputBytes`) from the moment they arrive, over a real `vmcp serve`, a real stdio backend
(the SDK's low-level server, its source below) and a real SDK client:

- a step's error result is kept as the step's error for the run's life (`on_error: continue`): 4 runs of 16 such
  nine-MB results held ~570 MB uncharged (RSS 117 -> 685 MB). Now each is charged as it arrives, and a step past the
  bound fails naming it and the setting; the charges go when the run ends;
- a successful step's result hands its charge to its output (not charged twice while it is read and sized), and a
  retried attempt's error result lets its charge go;
- the configured bounds apply: `WorkflowTools` took any `HeldOutputBytes` for absent (`or`: its length is 0 while
  empty), so the defaults (64 MiB a caller) stood whatever the config said."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

BACKEND = """
import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
TOOLS = [types.Tool(name=name, input_schema=SCHEMA) for name in ("big", "big_error")]

async def list_tools(ctx, params):
    return types.ListToolsResult(tools=TOOLS)

async def call_tool(ctx, params):
    text = "x" * int(params.arguments["n"])
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=params.name == "big_error")

async def serve():
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())

server = Server("big", on_list_tools=list_tools, on_call_tool=call_tool)
anyio.run(serve)
"""
MIB = 1024 * 1024
PER_CALLER = MIB  # limits.held_answer_bytes.per_caller: its least
ERROR_CHARS = 400_000  # each error result: two fit under 1 MiB, a third does not
STEPS = 6
BIG = 700_000  # a successful step's result: fits once, not twice

WORKFLOWS: list[dict[str, Any]] = [
    {
        "name": "keep_errors",
        "description": "Parallel steps whose large error results are kept as their errors.",
        "steps": [
            {
                "id": f"s{i}",
                "tool": "b_big_error",
                "arguments": {"n": ERROR_CHARS},
                "on_error": {"action": "continue"},
                "default_result": None,
            }
            for i in range(STEPS)
        ],
        "output": {"errors": [f"{{{{ (steps.s{i}.error or '')[:300] }}}}" for i in range(STEPS)]},
    },
    {
        "name": "retried_error",
        "description": "An error result three times: each attempt's is let go before the next.",
        "steps": [
            {
                "id": "r",
                "tool": "b_big_error",
                "arguments": {"n": ERROR_CHARS},
                "on_error": {"action": "retry", "retries": 2, "delay": 0},
            }
        ],
    },
    {
        "name": "two_big",
        "description": "Two large outputs held together: past the configured 1 MiB.",
        "steps": [
            {"id": "a", "tool": "b_big", "arguments": {"n": BIG}},
            {"id": "b", "tool": "b_big", "arguments": {"n": BIG}, "depends_on": ["a"]},
        ],
    },
    {
        "name": "one_big",
        "description": "One large result, read and kept as the step's output.",
        "steps": [{"id": "a", "tool": "b_big", "arguments": {"n": BIG}}],
        "output": {"length": "{{ steps.a.output | length }}"},
    },
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("step_bytes30")
    config = {
        "backends": [{"name": "b", "command": sys.executable, "args": ["-c", BACKEND]}],
        "workflows": WORKFLOWS,
        "limits": {"held_answer_bytes": {"per_caller": PER_CALLER}},
    }
    with running_gateway(write_config(Path(directory), config)) as running:
        yield running


def text(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_error_results_kept_by_a_run_are_charged_to_its_caller_and_released_when_it_ends(
    served: Gateway,
) -> None:
    async with Client(served.url) as client:
        for _ in range(2):  # the second run holds as much as the first: the first's charges were released
            result = await client.call_tool("keep_errors", {})
            assert not result.is_error, text(result)  # its steps go on past their errors
            errors = (result.structured_content or {})["errors"]
            kept = [error for error in errors if error.startswith("x" * 100)]
            refused = [error for error in errors if "limits.held_answer_bytes.per_caller" in error]
            assert len(kept) == 2, errors  # 2 x 400 KB fit in 1 MiB; each later one would pass it
            assert len(refused) == STEPS - 2, errors
            assert all("this step's result would pass 1 MiB" in error for error in refused), refused


async def test_a_result_read_as_its_steps_output_is_charged_once(served: Gateway) -> None:
    async with Client(served.url) as client:
        result = await client.call_tool("one_big", {})
    assert not result.is_error, text(result)
    assert result.structured_content == {"length": BIG}


async def test_a_retried_attempts_error_result_is_let_go(served: Gateway) -> None:
    async with Client(served.url) as client:
        result = await client.call_tool("retried_error", {})
    assert result.is_error
    assert "(after 3 attempts)" in text(result)  # the backend's error, not the bound: 3 x 400 KB were not held at once
    assert "held_answer_bytes" not in text(result)


async def test_the_configured_bound_applies_to_step_outputs(served: Gateway) -> None:
    async with Client(served.url) as client:
        result = await client.call_tool("two_big", {})
    assert result.is_error
    assert "step 'b' failed" in text(result)
    assert "this step's result would pass 1 MiB (limits.held_answer_bytes.per_caller)" in text(result)
