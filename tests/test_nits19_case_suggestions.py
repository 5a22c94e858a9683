"""A tool name in the wrong case (`Notes_Whoami`), through the real gateway under a Cedar policy with an SDK
client: call_tool and a direct tools/call both suggest the name meant, and only one the caller may use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import MCPError

from tests.support import Gateway, api_keys_file, bearer_client, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nits19-case")


@pytest.fixture(scope="module")
def keys(directory: Path) -> dict[str, str]:
    # alice may use every tool; bob only `notes_whoami` (the policy below).
    return api_keys_file(directory / "keys.json", {"alice": ["dev"], "bob": ["ops"]})


@pytest.fixture(scope="module")
def gateway(directory: Path, keys: dict[str, str]) -> Iterator[Gateway]:
    (directory / "policy.cedar").write_text(
        'permit(principal in Group::"dev", action, resource);\n'
        'permit(principal in Group::"ops", action, resource == Tool::"notes_whoami");\n'
    )
    config = {
        "backends": [demo_backend("notes"), demo_backend("secretvault")],
        "optimizer": {"enabled": True, "index_dir": str(directory / "idx"), "vector_wait": 0},
        "auth": {
            "incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}},
            "authorization": {"policies": "policy.cedar"},
        },
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def call_tool_error(gateway: Gateway, key: str, tool_name: str) -> str:
    async with bearer_client(gateway.url, key) as client:
        result = await client.call_tool("call_tool", {"tool_name": tool_name})
    assert result.is_error
    return result.content[0].text  # type: ignore[union-attr]


async def direct_call_error(gateway: Gateway, key: str, name: str) -> str:
    async with bearer_client(gateway.url, key) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool(name, {})
    return refused.value.error.message


async def test_call_tool_with_a_name_in_the_wrong_case_suggests_the_name_meant(
    gateway: Gateway, keys: dict[str, str]
) -> None:
    text = await call_tool_error(gateway, keys["alice"], "Notes_Whoami")
    assert text == (
        "field 'tool_name': unknown tool 'Notes_Whoami'; did you mean 'notes_whoami'? Otherwise use find_tool to "
        "look tools up"
    )
    # The backend's own name in another case, the gateway's prefix dropped: both backends' tools fit.
    text = await call_tool_error(gateway, keys["alice"], "WhoAmI")
    assert "did you mean 'notes_whoami' or 'secretvault_whoami'?" in text, text


async def test_call_tool_suggests_in_another_case_only_the_tools_the_caller_may_use(
    gateway: Gateway, keys: dict[str, str]
) -> None:
    assert "did you mean 'notes_whoami'?" in await call_tool_error(gateway, keys["bob"], " NOTES_WHOAMI ")
    assert "did you mean 'notes_whoami'?" in await call_tool_error(gateway, keys["bob"], "WHOAMI")
    text = await call_tool_error(gateway, keys["bob"], "SecretVault_Whoami")
    assert text == "field 'tool_name': unknown tool 'SecretVault_Whoami'; use find_tool to look tools up"


async def test_a_direct_call_in_the_wrong_case_suggests_the_name_meant_to_a_caller_who_may_use_it(
    gateway: Gateway, keys: dict[str, str]
) -> None:
    assert await direct_call_error(gateway, keys["alice"], "Notes_Whoami") == (
        "Unknown tool: 'Notes_Whoami'; did you mean 'notes_whoami'?"
    )
    assert await direct_call_error(gateway, keys["bob"], "NOTES_whoami") == (
        "Unknown tool: 'NOTES_whoami'; did you mean 'notes_whoami'?"
    )
    # Bob may not use secretvault's tools: the error does not tell him one exists.
    assert await direct_call_error(gateway, keys["bob"], "Secretvault_Whoami") == "Unknown tool: 'Secretvault_Whoami'"
    assert await direct_call_error(gateway, keys["alice"], "no_such_tool") == "Unknown tool: 'no_such_tool'"
