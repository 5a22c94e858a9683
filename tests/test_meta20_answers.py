"""find_tool's answer as an agent reads it, through the real gateway with an SDK client in both protocol eras (legacy is 2025-11-25): a
backend tool named like a meta-tool (a gateway behind the gateway, served without a prefix) is never offered,
since call_tool cannot reach it, and the gateway's log says what to do; a docstring's `Note:` (a caveat such
as "cannot be undone") stays in the description shown, and a description that opens with a section is shown
as written rather than as nothing."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# A backend that is itself a gateway of sorts: its own find_tool and call_tool, and two docstring tools.
INNER_SERVER = '''
from mcp.server.mcpserver import MCPServer

server = MCPServer("inner")


@server.tool()
def find_tool(query: str) -> str:
    """Search the inner catalogue of tools by words."""
    return "inner find"


@server.tool()
def call_tool(tool_name: str) -> str:
    """Run an inner tool by name."""
    return "inner call"


@server.tool()
def delete_branch(name: str) -> str:
    """Delete a git branch of the repository.

    Note:
        This cannot be undone; unmerged commits are lost.

    Args:
        name: The branch to delete.
    """
    return "deleted"


@server.tool(description="Returns:\\n    The number of open pull requests of the repository.")
def count_pull_requests() -> int:
    return 3


server.run()
'''


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("meta20-answers")
    server = directory / "inner_server.py"
    server.write_text(INNER_SERVER, encoding="utf-8")
    config = {
        "backends": [{"name": "inner", "command": sys.executable, "args": [str(server)]}],
        # Names kept as the backend gives them: its find_tool and call_tool meet the meta-tools'.
        "aggregation": {"conflict_resolution": "priority", "priority": ["inner"]},
        "optimizer": {"enabled": True, "index_dir": str(directory / "idx"), "vector_wait": 0},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def find(gateway: Gateway, mode: str, arguments: dict[str, Any]) -> dict[str, Any]:
    async with Client(gateway.url, mode=mode) as client:
        result = await client.call_tool("find_tool", arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_backend_tool_named_like_a_meta_tool_is_never_offered(gateway: Gateway, mode: str) -> None:
    for query in ("search the inner catalogue of tools", "run an inner tool by name"):
        answer = await find(gateway, mode, {"query": query, "backends": ["inner"], "limit": 10})
        names = [tool["name"] for tool in answer["tools"]]
        # Every name offered is one call_tool reaches; the inner find_tool and call_tool are not.
        assert names and not {"find_tool", "call_tool"} & set(names), names
        async with Client(gateway.url, mode=mode) as client:
            for name in names:
                called = await client.call_tool("call_tool", {"tool_name": name, "arguments": {"name": "x"}})
                assert not called.is_error, (name, called.content)


async def test_the_gateway_log_names_the_shadowed_tools_and_the_way_out(gateway: Gateway) -> None:
    for _ in range(300):  # the warning comes with the first catalogue: within 30 s, polled
        if "shadowed by the meta-tool" in gateway.output():
            break
        await anyio.sleep(0.1)
    line = next(line for line in gateway.output().splitlines() if "shadowed by the meta-tool" in line)
    assert "tool 'call_tool' of backend 'inner'" in line and "tool 'find_tool' of backend 'inner'" in line
    assert "conflict_resolution: prefix" in line


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_docstrings_note_and_a_section_first_description_reach_the_agent(gateway: Gateway, mode: str) -> None:
    answer = await find(gateway, mode, {"query": "delete a branch; count pull requests", "backends": ["inner"]})
    shown = {tool["name"]: tool for tool in answer["tools"]}
    deleting = shown["delete_branch"]
    assert deleting["description"] == (
        "Delete a git branch of the repository. Note: This cannot be undone; unmerged commits are lost."
    )
    # The Args block still describes the parameter, in its schema.
    assert deleting["input_schema"]["properties"]["name"]["description"] == "The branch to delete."
    counting = shown["count_pull_requests"]
    assert "number of open pull requests" in counting["description"], counting
