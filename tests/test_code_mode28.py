"""Code mode's defects a review found, through the real `vmcp serve`, the demo backend and the SDK client: a script
tool named like a backend tool (find_tool offered the hidden tool's description and schema, nobody warned); a
string continued by a backslash that changed when the script ended by `return`; a bare `MemoryError`; the
prelude's hooks, which a script could call (or whose checks it could rebind away) to send inf as null; and
argument keys that are not strings, which JSON made strings, losing a value."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# The script tool takes the name the demo backend `notes` serves its `whoami` under (prefix `notes_`).
SCRIPT_TOOL = "notes_whoami"
OVERRIDES = "aggregation.tools.notes.overrides"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("code_mode28")
    settings = {
        "backends": [demo_backend("notes")],
        "optimizer": {"enabled": True},
        "code_mode": {"enabled": True, "tool_name": SCRIPT_TOOL, "cpu_seconds": 20, "timeout": 120},
    }
    return write_config(directory, settings)


@pytest.fixture(scope="module")
def gateway(config: Path) -> Iterator[Gateway]:
    with running_gateway(config, "--log-level", "warning") as running:
        yield running


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def run(gateway: Gateway, script: str) -> types.CallToolResult:
    async with Client(gateway.url) as client:
        return await client.call_tool(SCRIPT_TOOL, {"script": script})


async def test_find_tool_never_offers_the_backend_tool_the_script_tool_hides(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        found = await client.call_tool(
            "find_tool", {"query": "which demo server process answers (whoami)", "limit": 50}
        )
    names = [tool["name"] for tool in json.loads(text(found))["tools"]]
    assert names and SCRIPT_TOOL not in names, names  # its description and schema were offered for the script tool


async def test_the_gateway_log_names_the_hidden_tool_and_the_setting_to_rename_it(gateway: Gateway) -> None:
    for _ in range(600):  # the optimizer's warning comes with the first catalogue: within 60 s, polled
        if "shadowed by" in gateway.output():
            break
        await anyio.sleep(0.1)
    lines = [line for line in gateway.output().splitlines() if SCRIPT_TOOL in line]
    # From the config as it loads (the backend's tools unknown yet), then from the catalogue with the optimizer's.
    assert any(OVERRIDES in line and f"code_mode.tool_name: '{SCRIPT_TOOL}'" in line for line in lines), lines
    assert any(f"tool '{SCRIPT_TOOL}' of backend 'notes' shadowed" in line for line in lines), lines


def test_vmcp_validate_warns_that_the_script_tool_would_hide_a_backend_tool(config: Path) -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stderr
    assert f"code_mode.tool_name: '{SCRIPT_TOOL}'" in checked.stderr and OVERRIDES in checked.stderr, checked.stderr


async def test_a_string_continued_by_a_backslash_keeps_its_value_when_the_script_ends_by_return(
    gateway: Gateway,
) -> None:
    script = 'q = "release \\\nnotes"\nreturn q'  # as when it ends with `q`: the script's lines are indented
    result = await run(gateway, script)
    assert not result.is_error and text(result) == "release notes", text(result)


async def test_a_script_ending_by_return_may_hold_a_triple_quoted_string(gateway: Gateway) -> None:
    script = (
        'q = """release\n  notes"""\necho = call_tool("notes_slow_echo", {"message": q, "seconds": 0})\nreturn echo'
    )
    result = await run(gateway, script)
    assert not result.is_error and text(result) == "release\n  notes", text(result)


async def test_a_script_out_of_memory_is_told_the_setting_that_bounds_it(gateway: Gateway) -> None:
    result = await run(gateway, 'x = ["a" * 100] * 1500000\nx')
    assert result.is_error and text(result) == "the script failed: it ran out of memory (256 MiB, code_mode.memory_mb)"


async def test_a_script_cannot_call_the_preludes_hooks(gateway: Gateway) -> None:
    script = '__call_tool__("notes_slow_echo", {"message": "m", "seconds": float("inf")})'
    result = await run(gateway, script)
    assert result.is_error and "line 1: `__call_tool__` is the gateway's own" in text(result), text(result)


@pytest.mark.parametrize(
    "script",
    [
        '__non_finite__ = lambda value, root: None\ncall_tool("notes_slow_echo", {"message": "m", "seconds": 1e999})',
        '__non_finite__ = lambda value, root: None\n[1, float("nan")]',
    ],
)
async def test_rebinding_a_name_does_not_let_inf_or_nan_pass_as_null(gateway: Gateway, script: str) -> None:
    result = await run(gateway, script)
    assert result.is_error and ("is +inf" in text(result) or "is nan" in text(result)), text(result)


async def test_an_argument_key_that_is_not_a_string_is_refused_not_merged(gateway: Gateway) -> None:
    script = 'call_tool("notes_slow_echo", {"message": "m", "seconds": 0, "extra": {1: "a", "1": "b"}})'
    result = await run(gateway, script)
    expected = """line 1: tool 'notes_slow_echo': arguments["extra"] has the key 1, not a string"""
    assert result.is_error and expected in text(result), text(result)
