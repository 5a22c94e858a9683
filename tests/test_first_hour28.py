"""First-hour review, round 28, on the demo's backends: a tool that runs only as a task (the reference server's
`simulate-research-query`, `execution.taskSupport: required`) is neither served nor found, since the gateway relays
no tasks; a misspelt workflow argument is refused naming it, not run on the defaults; and the banner's stdio snippet
does not ask for the HTTP listener's port variable. One real `vmcp serve` (the optimizer on) in front of the demo's
`everything` and `time` servers and its `world_clock` workflow, driven by the SDK's client."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from mcp import Client

from tests.support import EXAMPLES, NODE_BIN, POLL_SECONDS, Gateway, free_port, running_gateway, unavailable

pytestmark = pytest.mark.anyio

DEMO = yaml.safe_load((EXAMPLES / "demo.yaml").read_text(encoding="utf-8"))
DESCRIPTIONS = {backend["name"]: backend["description"] for backend in DEMO["backends"]}
[WORLD_CLOCK] = [workflow for workflow in DEMO["workflows"] if workflow["name"] == "world_clock"]
TASK_ONLY = "everything_simulate-research-query"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    everything = NODE_BIN / "mcp-server-everything"
    if not everything.exists():
        unavailable("the reference server is not installed (npm ci)")
    directory = tmp_path_factory.mktemp("first-hour28")
    config = {
        "backends": [
            {"name": "everything", "description": DESCRIPTIONS["everything"], "command": str(everything)},
            {
                "name": "time",
                "description": DESCRIPTIONS["time"],
                "command": sys.executable,
                "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
            },
        ],
        "workflows": [WORLD_CLOCK],
        "aggregation": DEMO["aggregation"],
        "optimizer": {"enabled": True, "index_dir": str(directory / "indexes")},
        "server": {"startup_wait": 60},
    }
    path = directory / "vmcp.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    # Set as `VMCP_SERVER__PORT=9000 make serve` sets it (`--port` from running_gateway outranks it), with one
    # setting a stdio start does read.
    env = {"VMCP_SERVER__PORT": str(free_port()), "VMCP_OPTIMIZER__ENABLED": "true"}
    with running_gateway(path, env=env) as started:
        yield started


async def _find(gateway: Gateway, query: str) -> list[str]:
    async with Client(gateway.url) as client:
        result = await client.call_tool("find_tool", {"query": query, "limit": 20})
    assert not result.is_error, result
    found = result.structured_content or json.loads(result.content[0].text)  # type: ignore[union-attr]
    return [tool["name"] for tool in found["tools"]]


def _banner_reads(gateway: Gateway, timeout: float = 60.0) -> tuple[dict[str, Any], str]:
    """The Claude Desktop entry the banner printed, and its "it reads …" line ("" when none)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = gateway.output().splitlines()
        if any("Ctrl-C stops" in line for line in lines):
            snippet = next(line for line in lines if '"mcpServers"' in line)
            reads = next((line for line in lines if "it reads " in line), "")
            return json.loads(snippet), reads
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"no banner in {gateway.log}")


async def test_a_task_only_tool_is_neither_found_nor_served_and_the_log_says_why(gateway: Gateway) -> None:
    found = await _find(gateway, "research a topic")
    assert TASK_ONLY not in found, found
    assert "everything_echo" in await _find(gateway, "echo a message back"), "the backend's other tools are served"
    async with Client(gateway.url) as client:
        called = await client.call_tool("call_tool", {"tool_name": TASK_ONLY, "arguments": {"topic": "cats"}})
    assert called.is_error, called
    text = " ".join(getattr(block, "text", "") for block in called.content)
    assert "taskSupport" not in text and "task augmentation" not in text, text  # never reached the backend
    dropped = [line for line in gateway.output().splitlines() if "'simulate-research-query' dropped" in line]
    assert len(dropped) == 1, gateway.output()
    assert "backend everything" in dropped[0] and "taskSupport: required" in dropped[0], dropped
    assert "does not relay tasks" in dropped[0], dropped


async def test_a_misspelt_workflow_argument_is_refused_naming_it(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        typo = await client.call_tool(
            "call_tool", {"tool_name": "world_clock", "arguments": {"tme": "17:30", "targets": ["Asia/Tokyo"]}}
        )
        right = await client.call_tool(
            "call_tool", {"tool_name": "world_clock", "arguments": {"time": "17:30", "targets": ["Asia/Tokyo"]}}
        )
    text = " ".join(getattr(block, "text", "") for block in typo.content)
    assert typo.is_error, text
    assert "'tme'" in text and "not accepted" in text, text
    assert not right.is_error, right


def test_the_banner_snippet_does_not_ask_for_the_listeners_port(gateway: Gateway) -> None:
    snippet, reads = _banner_reads(gateway)
    assert "VMCP_SERVER__PORT" not in reads and "VMCP_SERVER__PORT" not in json.dumps(snippet), reads
    assert "VMCP_OPTIMIZER__ENABLED" in reads, reads  # a setting a stdio start uses is still named


def test_the_demo_alarms_description_does_not_say_demo() -> None:
    assert "demo" not in DESCRIPTIONS["alarms"].lower(), DESCRIPTIONS["alarms"]
