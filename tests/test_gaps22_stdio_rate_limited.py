"""A stdio client refused by `rate_limits` is counted and audited as an HTTP one is: `vmcp_rate_limited_total` by
the setting whose bucket was empty, and a `vmcp_rate_limited` audit event; so is a call made inside another
(`call_tool`'s target), which over HTTP too the router refuses past the gate. Over real processes: `vmcp serve
--stdio` with the demo backend, its metrics on a listener of their own (the only way to reach a stdio gateway's),
or `vmcp serve` over HTTP; the audit log in a file; the SDK's client."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.support import demo_backend, free_port, running_gateway, write_config
from tests.support import metric_sample as sample

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SETTING = "rate_limits.per_tool.notes_whoami"
WAIT = 30.0  # seconds the gateway may take to write what it recorded (it writes within 0.1 s)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def until(found: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT
    while not (value := found()):
        assert time.monotonic() < deadline, "not recorded in time"
        time.sleep(0.05)
    return value


def events(audit: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []


async def test_a_stdio_call_refused_by_a_rate_limit_is_counted_by_setting_and_audited(tmp_path: Path) -> None:
    port = free_port()
    audit = tmp_path / "audit.log"
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes")],
            # One token per 1000 s: the second call is refused.
            "rate_limits": {"per_tool": {"notes_whoami": {"rate": 0.001, "burst": 1}}},
            "telemetry": {
                "audit": {"enabled": True, "output": str(audit)},
                "metrics": {"enabled": True, "listen": f"127.0.0.1:{port}"},
            },
        },
    )
    gateway = StdioServerParameters(
        command=sys.executable, args=["-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)]
    )
    base = f"http://127.0.0.1:{port}"
    async with Client(gateway) as client:
        first = await client.call_tool("notes_whoami", {})
        assert not first.is_error
        with pytest.raises(MCPError, match="rate limit reached"):
            await client.call_tool("notes_whoami", {})
        # Read while the gateway runs: its metrics listener stops with it.
        assert until(lambda: sample(base, "vmcp_rate_limited_total", setting=SETTING)) == 1
        [event] = until(lambda: [e for e in events(audit) if e["type"] == "vmcp_rate_limited"])
    assert event["outcome"] == "denied" and event["metadata"]["extra"]["error_type"] == SETTING
    assert event["target"] == {"method": "tools/call", "type": "tool", "name": "notes_whoami"}


async def test_an_inner_call_refused_over_http_is_counted_and_audited_too(tmp_path: Path) -> None:
    """Over HTTP the gate counts what it refuses with 429; `call_tool`'s target pays its tool's bucket in the router,
    past the gate, and its refusal is counted there, as over stdio."""
    audit = tmp_path / "audit.log"
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes")],
            "optimizer": {"enabled": True, "index_dir": str(tmp_path / "idx"), "vector_wait": 0},
            "rate_limits": {"per_tool": {"notes_whoami": {"rate": 0.001, "burst": 1}}},
            "telemetry": {"audit": {"enabled": True, "output": str(audit)}, "metrics": {"enabled": True}},
        },
    )
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            first = await client.call_tool("call_tool", {"tool_name": "notes_whoami", "arguments": {}})
            assert not first.is_error, first.content
            with pytest.raises(MCPError, match="rate limit reached"):
                await client.call_tool("call_tool", {"tool_name": "notes_whoami", "arguments": {}})
        assert until(lambda: sample(gateway.base, "vmcp_rate_limited_total", setting=SETTING)) == 1
        [event] = until(lambda: [e for e in events(audit) if e["type"] == "vmcp_rate_limited"])
    assert event["target"] == {"method": "tools/call", "type": "tool", "name": "notes_whoami"}
