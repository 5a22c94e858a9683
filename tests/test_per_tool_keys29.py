"""`rate_limits.per_tool` keys are tool names as clients call them, and a limit whose key names no served tool
never applies. pydantic-settings lower-cases a key set one variable at a time
(`VMCP_RATE_LIMITS__PER_TOOL__<TOOL>__RATE`), so such variables are refused, naming the variable and the JSON way;
a key naming no tool is reported by `vmcp validate --connect` and warned of by `vmcp serve`, as pinned names are.
Real `vmcp validate` and `vmcp serve` processes, the demo backend, a real SDK client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import demo_backend, running_gateway, write_config

pytestmark = pytest.mark.anyio

# One call per 1000 s: within a test, one call is the whole budget.
ONE_CALL = {"rate": 0.001, "burst": 1}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _vmcp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


# Each mapping's variables, and the variable that takes the mapping whole.
ONE_BY_ONE = {
    "VMCP_RATE_LIMITS__PER_TOOL": {
        "VMCP_RATE_LIMITS__PER_TOOL__NOTES_WHOAMI__RATE": "0.001",
        "VMCP_RATE_LIMITS__PER_TOOL__NOTES_WHOAMI__BURST": "1",
    },
    "VMCP_AGGREGATION__TOOLS": {"VMCP_AGGREGATION__TOOLS__NOTES__INCLUDE": '["whoami"]'},
}


@pytest.mark.parametrize("command", ["validate", "serve"])
def test_a_variable_setting_one_key_of_a_name_keyed_mapping_is_refused(tmp_path: Path, command: str) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("Notes")]})
    variables = {name: value for each in ONE_BY_ONE.values() for name, value in each.items()}
    result = _vmcp(command, "-c", str(config), *(["--port", "0"] if command == "serve" else []), env=variables)
    assert result.returncode == 2, result.stderr
    for whole, its_variables in ONE_BY_ONE.items():
        [line] = [line for line in result.stderr.splitlines() if f"{whole}='" in line]
        assert all(name in line for name in its_variables), line
        assert "lower-case" in line and "as JSON" in line, line
        assert "0.001" not in line and 'whoami"]' not in line, line  # names the variables, never their values


def test_the_whole_mapping_as_json_is_read_with_its_keys_as_written(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("Notes")]})
    limits = '{"Notes_whoami": {"rate": 0.001, "burst": 1}}'
    result = _vmcp("validate", "-c", str(config), env={"VMCP_RATE_LIMITS__PER_TOOL": limits})
    assert result.returncode == 0, result.stderr
    assert "lower-case" not in result.stderr


def test_validate_connect_reports_a_per_tool_key_no_tool_has(tmp_path: Path) -> None:
    per_tool = {"notes_whoami": ONE_CALL, "notes_whoam": ONE_CALL, "find_tool": ONE_CALL}
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "rate_limits": {"per_tool": per_tool}})
    result = _vmcp("validate", "--connect", "-c", str(config))
    assert result.returncode == 2, result.stderr
    reported = [line.strip() for line in result.stderr.splitlines() if "rate_limits.per_tool" in line]
    # find_tool is no tool with the optimizer off: its limit would never apply either.
    assert {line.split(":")[0] for line in reported} == {
        "rate_limits.per_tool.notes_whoam",
        "rate_limits.per_tool.find_tool",
    }
    [misspelt] = [line for line in reported if line.startswith("rate_limits.per_tool.notes_whoam:")]
    assert "did you mean 'notes_whoami'?" in misspelt, reported


async def test_serve_warns_of_an_unserved_key_and_limits_the_spelt_one(tmp_path: Path) -> None:
    per_tool = {"Notes_whoami": ONE_CALL, "Notes_whoam": ONE_CALL}
    config = write_config(tmp_path, {"backends": [demo_backend("Notes")], "rate_limits": {"per_tool": per_tool}})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            first = await client.call_tool("Notes_whoami", {})
            assert not first.is_error, first
            with pytest.raises(MCPError, match=r"rate limit reached.*rate_limits\.per_tool\.Notes_whoami"):
                await client.call_tool("Notes_whoami", {})
        warnings = [line for line in gateway.output().splitlines() if "WARNING" in line and "per_tool" in line]
    assert any(
        line.endswith("rate_limits.per_tool: no such tools in the catalogue, never limited: Notes_whoam")
        for line in warnings
    ), warnings
