"""A backend's tool with a huge input schema: checking a call's arguments never holds the event loop
(real gateway process, a raw JSON-RPC stdio backend, the SDK's client)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# One tool, `wide`: 6,000 required string parameters, a plain schema (no pattern, no $ref) but a large one
# (~200 KB: under the size past which a tool is dropped, backends/listing.py `MAX_TOOL_CHARS`); and `huge`, whose
# description is 5 MB.
WIDE_SERVER = r"""
import json, sys
PROPERTIES = {f"p{i}": {"type": "string"} for i in range(6_000)}
TOOLS = [
    {"name": "wide", "inputSchema": {"type": "object", "properties": PROPERTIES, "required": list(PROPERTIES)}},
    {"name": "huge", "description": "D" * 5_000_000, "inputSchema": {"type": "object"}},
]
for line in sys.stdin:
    request = json.loads(line)
    if "id" not in request:
        continue
    method = request.get("method")
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "w", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": "called"}]}
    elif method == "ping":
        result = {}
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "no"}}), flush=True)
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}), flush=True)
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    server = tmp_path / "wide.py"
    server.write_text(WIDE_SERVER, encoding="utf-8")
    # A deadline long enough for the whole check to run: its cost is what the event loop must not pay.
    config = write_config(
        tmp_path,
        {
            "backends": [{"name": "w", "command": sys.executable, "args": [str(server)]}],
            "limits": {"argument_check_timeout": 60},
        },
    )
    with running_gateway(config) as gateway:
        yield gateway


class HealthProbe:
    """/healthz asked again and again in a thread; the slowest answer while it ran."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            httpx2.get(f"{self.base}/healthz", timeout=120.0)
            self.slowest = max(self.slowest, time.monotonic() - started)
            time.sleep(0.02)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def test_a_costly_schema_is_checked_off_the_event_loop_while_the_gateway_answers(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        with HealthProbe(gateway.base) as probe:
            started = time.monotonic()
            result = await client.call_tool("w_wide", {"p0": "x"})  # small arguments: once checked inline
            took = time.monotonic() - started
        assert result.is_error
        assert "invalid arguments for tool 'w_wide'" in result.content[0].text  # type: ignore[union-attr]
        # The check itself takes seconds (the schema's meta-schema check); /healthz kept answering meanwhile.
        assert probe.slowest < took / 2, f"/healthz waited {probe.slowest:.2f}s during a {took:.2f}s check"


async def test_a_tool_whose_definition_is_megabytes_long_is_dropped_and_the_rest_served(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        assert [tool.name for tool in (await client.list_tools()).tools] == ["w_wide"]
    assert "backend w: tool 'huge' dropped: its definition is longer than 262,144 characters" in gateway.output()
