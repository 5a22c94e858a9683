"""Tools served to workflows alone (`aggregation.tools.<b>.workflow_only`), and annotations set by an override.

A workflow-only tool is in no list and no find_tool answer, and a client calling it, directly or through call_tool,
gets what a name never served gets; a workflow's steps call it, under the policy as any step. An override's
`annotations` go over the backend's: clients list them and Cedar judges the tool by them.

Real `vmcp serve` processes over the demo backend (examples/backends/demo_server.py), the SDK's client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, bearer_client, demo_backend, policed_config, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


REMEMBER = {
    "name": "remember",
    "description": "save a note, then find it again",
    "parameters": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
    "steps": [
        {"id": "save", "tool": "notes_save_note", "arguments": {"title": "{{ params.title }}", "text": "kept"}},
        {
            # Through call_tool with a literal name: a step's call still, so the hidden tool resolves.
            "id": "find",
            "tool": "call_tool",
            "arguments": {"tool_name": "notes_search_notes", "arguments": {"query": "{{ params.title }}"}},
            "depends_on": ["save"],
        },
    ],
    "output": {"found": "{{ steps.find.output }}"},
}
HIDDEN = ("notes_save_note", "notes_search_notes")


@pytest.fixture(scope="module")
def hiding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("workflow-only")
    config = {
        "backends": [demo_backend("notes")],
        "aggregation": {"tools": {"notes": {"workflow_only": ["save_note", "search_*"]}}},
        "optimizer": {"enabled": True, "index_dir": str(directory / "index"), "vector_wait": 0},
        "workflows": [REMEMBER],
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def refusal(client: Any, name: str) -> tuple[int, str]:
    """What a client's direct call of `name` gets: the JSON-RPC error's code and message, `name` blanked."""
    with pytest.raises(MCPError) as raised:
        await client.call_tool(name, {"title": "t", "text": "x", "query": "t"})
    return raised.value.error.code, raised.value.error.message.replace(name, "NAME")


async def test_a_workflow_calls_tools_its_clients_cannot_see_or_call(hiding: Gateway) -> None:
    async with Client(hiding.url) as client:
        ran = await client.call_tool("remember", {"title": "ada"})
        assert not ran.is_error, text(ran)
        assert ran.structured_content == {"found": {"result": ["ada"]}}, ran.structured_content

        # Called directly: the answer a name never served gets.
        never_served = await refusal(client, "notes_never_served")
        for name in HIDDEN:
            assert await refusal(client, name) == never_served

        # Through call_tool: the same.
        def through(name: str) -> dict[str, Any]:
            return {"tool_name": name, "arguments": {"query": "ada"}}

        unknown = text(await client.call_tool("call_tool", through("notes_never_served")))
        for name in HIDDEN:
            answer = await client.call_tool("call_tool", through(name))
            assert answer.is_error
            assert text(answer).replace(name, "NAME") == unknown.replace("notes_never_served", "NAME")

        # Not indexed: find_tool names the backend's other tools and the workflow, never the hidden ones.
        found = await client.call_tool("find_tool", {"query": "save a note, search notes", "limit": 20})
        assert not found.is_error, text(found)
        named = {tool["name"] for tool in json.loads(text(found))["tools"]}
        assert "notes_whoami" in named and "remember" in named, named
        assert not named & set(HIDDEN), named


POLICY = """\
permit(principal, action in [Action::"list_tools", Action::"call_tool"], resource)
when { resource.read_only || resource.backend == "workflows" };
"""


@pytest.fixture(scope="module")
def policed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    directory = tmp_path_factory.mktemp("annotation-overrides")
    tools = {
        "workflow_only": ["whoami", "slow_echo"],
        "overrides": {
            "search_notes": {"annotations": {"readOnlyHint": True, "title": "Search the notes"}},
            "slow_echo": {"annotations": {"readOnlyHint": True}},
        },
    }
    config = {
        "backends": [demo_backend("notes")],
        "aggregation": {"tools": {"notes": tools}},
        "workflows": [
            {
                "name": "echo_hidden",
                "description": "a hidden tool the policy permits (read-only by its override)",
                "steps": [{"id": "echo", "tool": "notes_slow_echo", "arguments": {"message": "hi", "seconds": 0}}],
            },
            {
                "name": "whoami_hidden",
                "description": "a hidden tool the policy refuses (not read-only)",
                "steps": [{"id": "who", "tool": "notes_whoami"}],
            },
        ],
    }
    path, keys = policed_config(directory, {"guest": ["guest"]}, POLICY, config)
    with running_gateway(path) as running:
        yield running, keys["guest"]


async def test_overridden_annotations_are_listed_and_decide_the_policy(policed: tuple[Gateway, str]) -> None:
    gateway, key = policed
    async with bearer_client(gateway.url, key) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        # save_note is not read-only (the backend says nothing), search_notes is by its override.
        assert set(listed) == {"notes_search_notes", "echo_hidden", "whoami_hidden"}, set(listed)
        annotations = listed["notes_search_notes"].annotations
        assert annotations is not None
        assert (annotations.read_only_hint, annotations.title) == (True, "Search the notes")
        searched = await client.call_tool("notes_search_notes", {"query": "x"})
        assert not searched.is_error, text(searched)


async def test_the_policy_judges_a_workflow_only_step_by_its_annotations(policed: tuple[Gateway, str]) -> None:
    gateway, key = policed
    async with bearer_client(gateway.url, key) as client:
        echoed = await client.call_tool("echo_hidden", {})
        assert not echoed.is_error, text(echoed)
        assert "hi" in text(echoed)
        refused = await client.call_tool("whoami_hidden", {})
        assert refused.is_error
        assert "not permitted" in text(refused), text(refused)
        with pytest.raises(MCPError):  # as a name never served: tools/call of a hidden tool is an unknown tool
            await client.call_tool("notes_slow_echo", {"message": "hi", "seconds": 0})
