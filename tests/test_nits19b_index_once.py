"""One catalogue, indexed once: a rebuild of the catalogue that changed no tool (a backend announcing a change
right after its handshake, as servers that register their tools late do; a list_changed that changed nothing)
rebuilt the keyword index and ran the model's update again ("index updated: embedded 0, reused N"), each
seconds of CPU at thousands of tools. A real gateway, a hand-written stdio backend, a real SDK client."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# JSON-RPC by hand: tools/list_changed right after `notifications/initialized` (a change the gateway re-fetches
# while it builds its first catalogue), and again on each call of `relist`; the tools never change.
ANNOUNCING_SERVER = r"""
import json
import sys

TOOLS = [
    {"name": "forecast", "description": "Weather forecast for a city", "inputSchema": {"type": "object"}},
    {"name": "relist", "description": "Announce a change of the tool list", "inputSchema": {"type": "object"}},
]
CHANGED = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}


def write(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    message = json.loads(line)
    method = message.get("method")
    if method == "notifications/initialized":
        write(CHANGED)
    if "id" not in message or method is None:
        continue
    request_id, params = message["id"], message.get("params") or {}
    if method == "initialize":
        capabilities = {"tools": {"listChanged": True}}
        write({"jsonrpc": "2.0", "id": request_id, "result": {
            "protocolVersion": params["protocolVersion"], "capabilities": capabilities,
            "serverInfo": {"name": "announcing", "version": "1"}}})
    elif method == "tools/list":
        write({"jsonrpc": "2.0", "id": request_id, "result": {"tools": TOOLS}})
    elif method == "tools/call":
        write(CHANGED)
        write({"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": "announced"}]}})
    elif method == "ping":
        write({"jsonrpc": "2.0", "id": request_id, "result": {}})
    else:
        write({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "method not found"}})
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def lines(gateway: Gateway, marker: str) -> int:
    return sum(marker in line for line in gateway.output().splitlines())


async def test_a_catalogue_rebuilt_without_a_changed_tool_is_indexed_once(tmp_path: Path) -> None:
    script = tmp_path / "announcing.py"
    script.write_text(ANNOUNCING_SERVER, encoding="utf-8")
    config = {
        "backends": [{"name": "w", "command": sys.executable, "args": [str(script)]}],
        "optimizer": {"enabled": True, "index_dir": str(tmp_path / "index")},
        "limits": {"list_changed_interval": 0},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            with anyio.fail_after(60):
                while True:  # the first catalogue embedded
                    found = await client.call_tool("find_tool", {"query": "weather in Paris", "limit": 1})
                    assert found.structured_content is not None, found.content
                    if found.structured_content["ranking"] == "hybrid":
                        break
                    await anyio.sleep(0.1)
            assert lines(gateway, "backend w changed: now 2 tools") == 1  # the announcement at start, re-fetched
            # Once more, after start: its end is the embedder's next pass (each pass ends counting answer tokens),
            # by which every earlier pass is done too.
            rebuilds, passes = lines(gateway, "optimizer: 2 tools; tools/list is"), lines(gateway, "answer tokens")
            await client.call_tool("call_tool", {"tool_name": "w_relist", "arguments": {}})
            deadline = time.monotonic() + 30
            while (
                lines(gateway, "optimizer: 2 tools; tools/list is") == rebuilds
                or lines(gateway, "answer tokens") == passes
            ):
                assert time.monotonic() < deadline, gateway.output()[-3000:]
                await anyio.sleep(0.05)
        output = gateway.output()

    # Three rebuilds of the same two tools: the first catalogue, the change announced at start, the relist; the
    # keywords were built once and the tools embedded once.
    assert lines(gateway, "backend w changed: now 2 tools") == 2, output[-3000:]
    assert lines(gateway, "keyword index updated") == 1, output[-3000:]
    assert lines(gateway, "index updated: embedded") == 1, output[-3000:]
    assert "index updated: embedded 2, reused 0" in output
