"""A tool name with the wrong separators (`everything_get_sum` for server-everything's `get-sum`, `getSum`,
dots, spaces) is answered with the name meant, by call_tool and a direct tools/call alike, through a real
gateway under a Cedar policy with an SDK client: only among the tools the caller may use, and a caller who
may use none of them is told of none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError

from tests.support import (
    NODE_BIN,
    Gateway,
    bearer_client,
    demo_backend,
    policed_config,
    running_gateway,
    unavailable,
)

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

EVERYTHING = NODE_BIN / "mcp-server-everything"
# alice may use every tool; bob server-everything's echo and notes' whoami, nothing else.
POLICY = """\
permit(principal in Group::"dev", action, resource);
permit(principal in Group::"ops", action, resource == Tool::"everything_echo");
permit(principal in Group::"ops", action, resource == Tool::"notes_whoami");
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    if not EVERYTHING.exists():
        unavailable("server-everything is not installed (npm ci)")
    directory: Path = tmp_path_factory.mktemp("meta20b-names")
    config = {
        "backends": [
            {"name": "everything", "command": str(EVERYTHING)},
            demo_backend("notes"),
            demo_backend("secretvault"),
        ],
        "optimizer": {"enabled": True, "index_dir": str(directory / "idx"), "vector_wait": 0},
    }
    path, keys = policed_config(directory, {"alice": ["dev"], "bob": ["ops"]}, POLICY, config)
    with running_gateway(path, "--log-level", "warning") as running:
        yield running, keys


async def call_tool_error(gateway: Gateway, key: str, tool_name: str) -> str:
    async with bearer_client(gateway.url, key) as client:
        result = await client.call_tool("call_tool", {"tool_name": tool_name, "arguments": {}})
    text: str = result.content[0].text
    assert result.is_error, text
    return text


async def direct_call_error(gateway: Gateway, key: str, name: str) -> str:
    async with bearer_client(gateway.url, key) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool(name, {})
    message: str = refused.value.error.message
    return message


@pytest.mark.parametrize(
    "name",
    ["everything_get_sum", "everything-get-sum", "Everything.Get.Sum", "everything_getSum", " everything get sum "],
)
async def test_a_name_with_other_separators_suggests_the_name_meant(gateway: Any, name: str) -> None:
    running, keys = gateway
    assert await call_tool_error(running, keys["alice"], name) == (
        f"field 'tool_name': unknown tool '{name}'; did you mean 'everything_get-sum'? Otherwise use find_tool to "
        "look tools up"
    )
    assert await direct_call_error(running, keys["alice"], name) == (
        f"Unknown tool: '{name}'; did you mean 'everything_get-sum'?"
    )


async def test_the_name_at_its_backend_with_other_separators_suggests_the_served_name(gateway: Any) -> None:
    running, keys = gateway
    assert "did you mean 'everything_get-sum'?" in await call_tool_error(running, keys["alice"], "get_sum")
    assert "did you mean 'everything_get-sum'?" in await direct_call_error(running, keys["alice"], "GetSum")


async def test_other_separators_suggest_only_the_tools_the_caller_may_use(gateway: Any) -> None:
    running, keys = gateway
    # `whoami` at two backends: alice may use both, bob only notes'.
    assert "did you mean 'notes_whoami' or 'secretvault_whoami'?" in await call_tool_error(
        running, keys["alice"], "who-am-i"
    )
    assert await direct_call_error(running, keys["bob"], "who-am-i") == (
        "Unknown tool: 'who-am-i'; did you mean 'notes_whoami'?"
    )
    assert "did you mean 'everything_echo'?" in await call_tool_error(running, keys["bob"], "everything-echo")
    # bob may not use get-sum: nothing suggested, nothing named.
    assert await call_tool_error(running, keys["bob"], "everything_get_sum") == (
        "field 'tool_name': unknown tool 'everything_get_sum'; use find_tool to look tools up"
    )
    assert await direct_call_error(running, keys["bob"], "everything_get_sum") == ("Unknown tool: 'everything_get_sum'")


async def test_a_name_that_folds_to_no_tool_suggests_nothing(gateway: Any) -> None:
    running, keys = gateway
    assert await direct_call_error(running, keys["alice"], "everything_get_summary") == (
        "Unknown tool: 'everything_get_summary'"
    )
