"""A workflow step the policy refuses, over a real gateway (API keys, a Cedar policy, the demo backend) and a
real client: a caller the refused tool is hidden from learns the step's id, never the tool's name nor the
policy naming it; a caller who may see the tool still gets the router's full message, and the audit log keeps
the whole record for operators."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.support import Gateway, bearer_client, demo_backend, policed_config, running_gateway

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# Guests may not see (list or call) notes_whoami; staff may do everything. The forbid's id names the tool, as
# operators' policy ids often do.
POLICY = """\
permit(principal, action, resource);
@id("no-whoami-for-guests")
forbid(
  principal in Group::"guests",
  action in [Action::"list_tools", Action::"call_tool"],
  resource == Tool::"notes_whoami"
);
"""
WORKFLOWS: list[dict[str, Any]] = [
    {"name": "who_am_i", "description": "Who the backend sees.", "steps": [{"id": "ask", "tool": "notes_whoami"}]},
    {
        "name": "each_who",
        "description": "Who the backend sees, twice.",
        "steps": [{"id": "asks", "type": "for_each", "tool": "notes_whoami", "over": "{{ [1, 2] }}"}],
    },
    {"name": "outer", "description": "Runs who_am_i.", "steps": [{"id": "inner", "tool": "who_am_i"}]},
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str], Path]]:
    directory = tmp_path_factory.mktemp("wf20b-denials")
    config = {
        "backends": [demo_backend("notes")],
        "telemetry": {"audit": {"enabled": True, "output": "audit.log", "include": ["workflow_step_failed"]}},
        "workflows": WORKFLOWS,
    }
    path, keys = policed_config(directory, {"guest": ["guests"], "staff": ["staff"]}, POLICY, config)
    with running_gateway(path) as gateway:
        yield gateway, keys, directory / "audit.log"


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.parametrize(
    ("workflow", "reason"),
    [
        ("who_am_i", "step 'ask' failed: not permitted: caller "),
        ("each_who", "step 'asks' failed: item 0: not permitted: caller "),
        ("outer", "step 'inner' failed: workflow 'who_am_i' failed: step 'ask' failed: not permitted: caller "),
    ],
)
async def test_a_refused_step_does_not_name_a_tool_hidden_from_the_caller(
    guarded: tuple[Gateway, dict[str, str], Path], workflow: str, reason: str
) -> None:
    gateway, keys, _ = guarded
    async with bearer_client(gateway.url, keys["guest"]) as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool(workflow, {})
    assert "notes_whoami" not in listed and {"who_am_i", "each_who", "outer"} <= listed  # hidden, to this caller
    assert result.is_error
    assert reason in text(result) and "may not make this step's call" in text(result), text(result)
    assert "whoami" not in text(result)  # neither the tool nor the policy id naming it


async def test_a_caller_who_may_see_the_tool_runs_the_same_workflow(
    guarded: tuple[Gateway, dict[str, str], Path],
) -> None:
    gateway, keys, _ = guarded
    async with bearer_client(gateway.url, keys["staff"]) as client:
        result = await client.call_tool("who_am_i", {})
    assert not result.is_error, text(result)


async def test_the_audit_log_names_the_refused_tool(guarded: tuple[Gateway, dict[str, str], Path]) -> None:
    gateway, keys, audit = guarded
    async with bearer_client(gateway.url, keys["guest"]) as client:
        assert (await client.call_tool("who_am_i", {})).is_error
    deadline = time.monotonic() + 30  # the audit thread writes off the request path
    denied: list[dict[str, Any]] = []
    while not denied and time.monotonic() < deadline:
        events = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
        denied = [e for e in events if e["outcome"] == "denied" and e["target"].get("name") == "notes_whoami"]
        await anyio.sleep(0.05)
    assert denied, "no denied call of notes_whoami in the audit log"
    assert denied[0]["type"] == "workflow_step_failed" and denied[0]["subjects"]["user_id"] == "guest"
