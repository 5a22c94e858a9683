"""A backend flooding a client that does not read: what the gateway holds stays bounded (real gateway process).

The backend (a raw JSON-RPC stdio server below) answers a call with thousands of large progress notifications or
log messages, then writes a marker file: by then the gateway has read nearly all of it. The client that made the
call reads nothing, so every notification the gateway kept for it would still be in its memory.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
from mcp import Client

from tests.support import Gateway, demo_backend, raw_session, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

FLOODER = r"""
import json, sys
def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("progress", "logs", "echo")]
for line in sys.stdin:
    request = json.loads(line)
    method, params = request.get("method"), request.get("params") or {}
    if "id" not in request:
        continue
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "serverInfo": {"name": "flooder", "version": "1"},
                  "capabilities": {"tools": {}, "logging": {}}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        args = params.get("arguments") or {}
        token = (params.get("_meta") or {}).get("progressToken")
        for i in range(int(args.get("count", 0))):
            filler = "x" * int(args.get("size", 10))
            if params["name"] == "progress":
                send({"jsonrpc": "2.0", "method": "notifications/progress",
                      "params": {"progressToken": token, "progress": i, "message": filler}})
            else:
                send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": filler}})
        if args.get("marker"):
            open(args["marker"], "w").close()
        result = {"content": [{"type": "text", "text": "flooded " + params["name"]}]}
    elif method in ("ping", "logging/setLevel"):
        result = {}
    else:
        send({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "no " + str(method)}})
        continue
    send({"jsonrpc": "2.0", "id": request["id"], "result": result})
"""
COUNT = 3000
SIZE = 100_000  # 300 MB in all: held by the gateway, far more than the bound below
MOST_GROWTH = 100 * 2**20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    server = tmp_path / "flooder.py"
    server.write_text(FLOODER, encoding="utf-8")
    flooder = {"name": "flood", "command": sys.executable, "args": [str(server)]}
    config = write_config(tmp_path, {"backends": [demo_backend("demo"), flooder]})
    with running_gateway(config) as gateway:
        yield gateway


@contextmanager
def unread_call(gateway: Gateway, headers: dict[str, str], tool: str, arguments: dict[str, Any]) -> Iterator[None]:
    """A tools/call POSTed on a socket whose answer is never read (a client stalled mid-call)."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": {"progressToken": "p"}},
        }
    ).encode()
    lines = ["POST /mcp HTTP/1.1", f"Host: 127.0.0.1:{gateway.port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        yield


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"the backend did not finish its flood within {timeout}s"
        time.sleep(0.1)


async def others_are_served(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        assert "flooded" in (await client.call_tool("flood_echo", {})).content[0].text  # type: ignore[union-attr]
        saved = await client.call_tool("demo_save_note", {"title": "t", "text": "x"})
        assert not saved.is_error


@pytest.mark.parametrize("tool", ["progress", "logs"])
async def test_a_flood_for_a_client_that_does_not_read_is_not_held_in_memory(
    gateway: Gateway, tmp_path: Path, tool: str
) -> None:
    headers = raw_session(gateway.url)
    if tool == "logs":  # a client that asked for log messages: its calls take a session of their own
        level = {"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "debug"}}
        assert httpx2.post(gateway.url, headers=headers, json=level).status_code == 200
    process = psutil.Process(gateway.proc.pid)
    before = process.memory_info().rss
    marker = tmp_path / f"{tool}.done"
    with unread_call(gateway, headers, f"flood_{tool}", {"count": COUNT, "size": SIZE, "marker": str(marker)}):
        wait_for(marker)
        grown = process.memory_info().rss - before
        assert grown < MOST_GROWTH, f"the gateway grew by {grown // 2**20} MB holding a stalled client's messages"
        assert (await httpx2.AsyncClient().get(f"{gateway.base}/healthz", timeout=10.0)).status_code == 200
        await others_are_served(gateway)
    if tool == "logs":
        assert "notifications (log messages, resource updates) dropped so far" in gateway.output()
