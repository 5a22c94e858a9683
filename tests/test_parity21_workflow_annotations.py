"""A workflow's explicit `annotations` may not claim more safety than its steps' tools declare (ToolHive's
safety floor): a real gateway over the real filesystem server (whose write_file declares itself destructive,
read_text_file read-only) and the demo backend (whose tools declare nothing), listed by the SDK's client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from tests.support import NODE_BIN, Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.anyio]


def _workflow(name: str, tool: str, annotations: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"{name} over {tool}.",
        "steps": [{"id": "only", "tool": tool, "arguments": {"path": "a.txt", "content": "x"}}],
        "annotations": annotations,
    }


WORKFLOWS = [
    # write_file declares readOnlyHint false, destructiveHint true: neither claim may be served.
    _workflow("tidy", "filesystem_write_file", {"readOnlyHint": True, "destructiveHint": False, "title": "Tidy"}),
    # save_note declares nothing: the author may know better than the MCP defaults.
    _workflow("jot", "notes_save_note", {"readOnlyHint": True}),
    # Less safety than the steps claim is always served, in MCP's or in snake_case names.
    _workflow("peek", "filesystem_read_text_file", {"read_only_hint": False}),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("parity21-annotations")
    (directory / "files").mkdir()
    filesystem = {"name": "filesystem", "command": str(NODE_BIN / "mcp-server-filesystem"), "args": ["files"]}
    config = write_config(directory, {"backends": [filesystem, demo_backend("notes")], "workflows": WORKFLOWS})
    with running_gateway(config) as running:
        yield running


async def _annotations(gateway: Gateway) -> dict[str, types.ToolAnnotations]:
    async with Client(gateway.url) as client:
        tools = (await client.list_tools()).tools
    return {tool.name: tool.annotations for tool in tools if tool.annotations is not None}


async def test_a_workflow_is_not_served_as_safer_than_a_step_declares(gateway: Gateway) -> None:
    tidy = (await _annotations(gateway))["tidy"]
    assert (tidy.read_only_hint, tidy.destructive_hint, tidy.title) == (False, True, "Tidy")
    log = gateway.output()
    assert "workflow 'tidy': annotations.readOnlyHint: true is not served" in log, log
    assert "step 'only' calls 'filesystem_write_file', declared not read-only" in log, log
    assert "workflow 'tidy': annotations.destructiveHint: false is not served" in log, log


async def test_an_authors_hint_over_steps_that_declare_nothing_is_served(gateway: Gateway) -> None:
    assert (await _annotations(gateway))["jot"].read_only_hint is True


async def test_a_snake_case_hint_claiming_less_safety_is_served(gateway: Gateway) -> None:
    assert (await _annotations(gateway))["peek"].read_only_hint is False


def test_a_tool_declared_destructive_counts_as_declared_not_read_only() -> None:
    """A tool saying `destructiveHint: true` and nothing of read-only has said it is not read-only (MCP: destructive
    means it modifies its environment): a workflow over it claiming `readOnlyHint: true` is not served so."""
    from types import SimpleNamespace

    from vmcp_opt.config import WorkflowConfig
    from vmcp_opt.workflows.validation import derived_annotations

    tool = types.Tool(
        name="fs_rm_all", input_schema={"type": "object"}, annotations=types.ToolAnnotations(destructive_hint=True)
    )
    workflow = WorkflowConfig.model_validate(_workflow("wipe", "fs_rm_all", {"readOnlyHint": True}))
    served = derived_annotations([workflow], {"fs_rm_all": SimpleNamespace(tool=tool)})["wipe"]
    assert served.read_only_hint is not True
