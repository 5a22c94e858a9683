"""Workflow-only tools stay sealed: a step reaches one only when its workflow names it as written.

A step's `tool`, or a literal `tool_name` of a `call_tool` step, may be a workflow-only tool; a `tool_name` a
template renders is the client's choice, and gets what a made-up name gets, even when another step of the same
workflow names that tool. While a workflow-only tool's backend is down a client's call of it is still answered
as a made-up name's (no "served by backend ..., which is down"), and a step naming it is told its backend is down.

Real `vmcp serve` processes over the demo backend (examples/backends/demo_server.py), the SDK's client.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import DEMO_SERVER, Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


PROXY = {
    "name": "proxy",
    "description": "call a tool the client names",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    "steps": [
        {
            "id": "go",
            "tool": "call_tool",
            "arguments": {"tool_name": "{{ params.name }}", "arguments": {"query": "x", "title": "x", "text": "x"}},
        }
    ],
}
# One step names the hidden search literally; the other step's rendered name must not borrow that.
MIXED = {
    "name": "mixed",
    "description": "a literal hidden step, then a client-named one",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    "steps": [
        {
            "id": "search",
            "tool": "call_tool",
            "arguments": {"tool_name": "notes_search_notes", "arguments": {"query": "x"}},
        },
        {
            "id": "go",
            "tool": "call_tool",
            "arguments": {"tool_name": "{{ params.name }}", "arguments": {"query": "x", "title": "x", "text": "x"}},
            "depends_on": ["search"],
        },
    ],
}
# A script a step runs is the client's code: its calls are no step's, whatever the step names.
SCRIPT_TOOL = "execute_tool_script"
SCRIPTED = {
    "name": "scripted",
    "description": "run the client's script",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    "steps": [
        {
            "id": "run",
            "tool": SCRIPT_TOOL,
            "arguments": {"script": "call_tool(name, query='x')", "data": {"name": "{{ params.name }}"}},
        }
    ],
}
HIDDEN = ("notes_save_note", "notes_search_notes")
MADE_UP = "notes_never_served"


@pytest.fixture(scope="module")
def proxying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("workflow-only-sealed")
    config = {
        "backends": [demo_backend("notes")],
        "aggregation": {"tools": {"notes": {"workflow_only": ["save_note", "search_*"]}}},
        "optimizer": {"enabled": True, "index_dir": str(directory / "index"), "vector_wait": 0},
        "code_mode": {"enabled": True, "cpu_seconds": 2, "memory_mb": 256, "call_timeout": 5},
        "workflows": [PROXY, MIXED, SCRIPTED],
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def test_a_templated_tool_name_cannot_reach_a_workflow_only_tool(proxying: Gateway) -> None:
    async with Client(proxying.url) as client:
        for workflow in ("proxy", "mixed", "scripted"):
            made_up = await client.call_tool(workflow, {"name": MADE_UP})
            assert made_up.is_error, text(made_up)
            for name in HIDDEN:
                reached = await client.call_tool(workflow, {"name": name})
                assert reached.is_error, (workflow, name, text(reached))
                assert text(reached).replace(name, "NAME") == text(made_up).replace(MADE_UP, "NAME")
            # The rendered name still reaches what clients are served.
            served = await client.call_tool(workflow, {"name": "notes_whoami"})
            assert not served.is_error, (workflow, text(served))


@pytest.fixture
def dying(tmp_path: Path) -> Iterator[tuple[Gateway, Path]]:
    """A notes backend that starts only while `flag` exists: once killed with it gone, it stays down."""
    flag = tmp_path / "up"
    flag.write_text("1")
    wrapper = tmp_path / "notes_once.py"
    wrapper.write_text(
        "import os, runpy, sys\n"
        f"if not os.path.exists({str(flag)!r}):\n    sys.exit(3)\n"
        f"runpy.run_path({str(DEMO_SERVER)!r}, run_name='__main__')\n"
    )
    config = {
        "backends": [{"name": "notes", "command": sys.executable, "args": [str(wrapper)]}],
        "aggregation": {"tools": {"notes": {"include": ["whoami"], "workflow_only": ["save_note"]}}},
        "workflows": [
            {
                "name": "save",
                "description": "save a note",
                "steps": [{"id": "save", "tool": "notes_save_note", "arguments": {"title": "t", "text": "x"}}],
            }
        ],
    }
    with running_gateway(write_config(tmp_path, config)) as running:
        yield running, flag


async def told_down(client: Client) -> None:
    """Until the gateway knows the backend is down: its served tool says so (a call polled, no event to wait on)."""
    with anyio.fail_after(30):
        for _ in itertools.count():
            if "is served by backend 'notes', which is" in text(await client.call_tool("notes_whoami", {})):
                return
            await anyio.sleep(0.1)


async def refusal(client: Client, name: str) -> tuple[int, str]:
    """A client's direct call of `name`: its JSON-RPC error's code and message, `name` blanked."""
    with pytest.raises(MCPError) as raised:
        await client.call_tool(name, {"title": "t", "text": "x"})
    return raised.value.error.code, raised.value.error.message.replace(name, "NAME")


async def test_a_workflow_only_tool_whose_backend_is_down_is_still_unknown_to_clients(
    dying: tuple[Gateway, Path],
) -> None:
    gateway, flag = dying
    async with Client(gateway.url) as client:
        saved = await client.call_tool("save", {})
        assert not saved.is_error, text(saved)
        flag.unlink()
        for child in gateway.children():
            if "notes_once.py" in " ".join(child.cmdline()):
                child.kill()
        await told_down(client)

        assert await refusal(client, "notes_save_note") == await refusal(client, MADE_UP)
        # The workflow naming it is told why its step failed.
        failed = await client.call_tool("save", {})
        assert failed.is_error
        assert "which is" in text(failed), text(failed)
