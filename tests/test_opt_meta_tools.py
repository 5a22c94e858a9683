"""find_tool and call_tool as an agent uses them, through the real gateway under a Cedar policy with an SDK
client: errors that help fix the call without naming what the caller may not use (a name in the wrong case
suggests the name meant, for call_tool and a direct tools/call alike), and null for an optional field read as
leaving it out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError

from tests.support import Gateway, api_keys_file, bearer_client, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("opt-meta-tools")


@pytest.fixture(scope="module")
def keys(directory: Path) -> dict[str, str]:
    # alice may use every tool; bob one tool of `notes` and none of `secretvault` (the policy below).
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


async def call(gateway: Gateway, key: str, tool: str, arguments: dict[str, Any]) -> tuple[bool, str]:
    async with bearer_client(gateway.url, key) as client:
        result = await client.call_tool(tool, arguments)
    return bool(result.is_error), result.content[0].text  # type: ignore[union-attr]


async def test_a_backends_error_names_only_the_backends_the_caller_may_search(
    gateway: Gateway, keys: dict[str, str]
) -> None:
    texts = {
        (who, backend): await call(gateway, keys[who], "find_tool", {"query": "save a note", "backends": [backend]})
        for who in ("alice", "bob")
        for backend in ("nope", "secretvault")
    }
    # bob may use no tool of `secretvault`: it is as unknown to him as `nope`, and neither error names it.
    for backend in ("nope", "secretvault"):
        refused, text = texts["bob", backend]
        assert refused and "secretvault" not in text.replace(f"['{backend}']", ""), text
        assert text.endswith("you can search: ['notes']"), text
    assert texts["bob", "nope"][1] == texts["bob", "secretvault"][1].replace("secretvault", "nope")
    # alice may use every tool: she searches `secretvault`, and her error names both backends.
    assert not texts["alice", "secretvault"][0]
    refused, text = texts["alice", "nope"]
    assert refused and text.endswith("you can search: ['notes', 'secretvault']"), text


async def test_an_unknown_tool_name_suggests_the_tools_it_may_mean_that_the_caller_may_use(
    gateway: Gateway, keys: dict[str, str]
) -> None:
    refused, text = await call(gateway, keys["bob"], "call_tool", {"tool_name": "whoami"})
    assert refused and text == (
        "field 'tool_name': unknown tool 'whoami'; did you mean 'notes_whoami'? Otherwise use find_tool to look "
        "tools up"
    )
    refused, text = await call(gateway, keys["alice"], "call_tool", {"tool_name": "whoami"})
    assert refused and "did you mean 'notes_whoami' or 'secretvault_whoami'?" in text, text
    refused, text = await call(gateway, keys["alice"], "call_tool", {"tool_name": " notes_whoami "})
    assert refused and "did you mean 'notes_whoami'?" in text, text
    # bob may not use save_note on either backend: nothing suggested, nothing named.
    refused, text = await call(gateway, keys["bob"], "call_tool", {"tool_name": "save_note"})
    assert refused and text == "field 'tool_name': unknown tool 'save_note'; use find_tool to look tools up"


async def test_null_for_an_optional_field_is_read_as_leaving_it_out(gateway: Gateway, keys: dict[str, str]) -> None:
    refused, text = await call(gateway, keys["bob"], "call_tool", {"tool_name": "notes_whoami", "arguments": None})
    assert not refused and '"pid"' in text, text
    refused, text = await call(
        # "whoami", not "who am I": the keyword ranking finds it too, while the model may still be loading.
        gateway,
        keys["bob"],
        "find_tool",
        {"query": "whoami", "limit": None, "backends": None},
    )
    assert not refused and "notes_whoami" in text, text


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
