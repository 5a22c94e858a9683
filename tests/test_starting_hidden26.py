"""find_tool while a backend is still on its first connection attempt, over a real gateway (API keys, a Cedar
policy, the demo backend and a backend that never finishes its handshake) and real clients: a caller under a
restricting policy is told that backends are starting, never which (no policy can say before a backend's tools
are listed whether the caller may use any of them); without a policy the starting backend is named."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import api_keys_file, bearer_client, demo_backend, policed_config, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# bob (ops) may use only the notes backend; alice (dev) may use everything.
POLICY = """\
permit(principal in Group::"dev", action, resource);
permit(principal in Group::"ops", action, resource in Backend::"notes");
"""
HIDDEN = "payroll_admin"
# Reads its stdin to the end and never answers the handshake: starting for as long as the gateway runs
# (`timeouts.connect` an hour), and gone with the gateway, whose end closes the pipe.
STALLED = {"name": HIDDEN, "command": sys.executable, "args": ["-c", "import sys; sys.stdin.buffer.read()"]}
GROUPS = {"alice": ["dev"], "bob": ["ops"]}
GENERIC_NOTE = "some backends are still starting; their tools are not searched yet"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gateway_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "backends": [demo_backend("notes"), STALLED],
        "optimizer": {"enabled": True, "index_dir": str(tmp_path / "idx"), "vector_wait": 0},
        "server": {"startup_wait": 1},
        "timeouts": {"connect": 3600},
    }


async def find(url: str, key: str, arguments: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """find_tool's text and structured answer for the caller holding `key`."""
    async with bearer_client(url, key) as client:
        result = await client.call_tool("find_tool", arguments)
    text = "".join(block.text for block in result.content if block.type == "text")
    return text, result.structured_content


async def test_find_tool_never_names_a_starting_backend_to_a_caller_under_a_policy(tmp_path: Path) -> None:
    path, keys = policed_config(tmp_path, GROUPS, POLICY, gateway_config(tmp_path))
    with running_gateway(path, "--log-level", "warning", wait_ready=False) as gateway:
        for subject in ("bob", "alice"):
            text, answer = await find(gateway.url, keys[subject], {"query": "save a note"})
            assert answer is not None, text
            assert HIDDEN not in text and HIDDEN not in repr(answer), subject
            assert "backends_starting" not in answer
            assert GENERIC_NOTE in answer["note"]  # the agent still learns that tools may be missing for now
        # Named in a filter, the starting backend is answered as a name no backend has.
        hidden, _ = await find(gateway.url, keys["bob"], {"query": "x", "backends": [HIDDEN]})
        made_up, _ = await find(gateway.url, keys["bob"], {"query": "x", "backends": ["made_up"]})
    assert hidden.replace(HIDDEN, "made_up") == made_up


async def test_find_tool_names_the_starting_backend_when_no_policy_hides_anything(tmp_path: Path) -> None:
    keys = api_keys_file(tmp_path / "keys.json", GROUPS)
    auth = {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}}
    path = write_config(tmp_path, {**gateway_config(tmp_path), "auth": auth})
    with running_gateway(path, "--log-level", "warning", wait_ready=False) as gateway:
        text, answer = await find(gateway.url, keys["bob"], {"query": "save a note"})
    assert answer is not None, text
    assert HIDDEN in answer["backends_starting"]
    assert f"backends still starting: {', '.join(answer['backends_starting'])}" in answer["note"]
