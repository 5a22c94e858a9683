"""A stdio backend whose process exits while a client's tools/call is in flight, through a real gateway and a
real SDK client: the call's error says with what status the process exited and its last stderr line (as the log
and /readyz do), with the backend's secrets masked, not only "Connection closed"."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client

from tests.support import running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SECRET = "hunter2-very-secret-password"

# JSON-RPC by hand: `exit` writes a stderr line (the secret in it) and exits with code 7 without answering.
EXITING_SERVER = r"""
import json
import os
import sys

TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("ok", "exit")]


def write(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message or "method" not in message:
        continue
    request_id, method, params = message["id"], message["method"], message.get("params") or {}
    if method == "initialize":
        info = {"name": "exiting", "version": "1"}
        write({"jsonrpc": "2.0", "id": request_id, "result": {
            "protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": info}})
    elif method == "tools/list":
        write({"jsonrpc": "2.0", "id": request_id, "result": {"tools": TOOLS}})
    elif method == "tools/call" and params["name"] == "exit":
        print("fatal: login refused for " + os.environ["DB_PASSWORD"], file=sys.stderr, flush=True)
        os._exit(7)
    elif method == "tools/call":
        write({"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": "fine"}]}})
    else:
        write({"jsonrpc": "2.0", "id": request_id, "result": {}})
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_a_call_whose_stdio_backend_exits_says_the_exit_status(tmp_path: Path) -> None:
    script = tmp_path / "exiting.py"
    script.write_text(EXITING_SERVER, encoding="utf-8")
    config = {
        "backends": [{"name": "db", "command": sys.executable, "args": [str(script)], "env": {"DB_PASSWORD": SECRET}}],
        "health": {"interval": 3600},
        "failure": {"restart": {"enabled": False}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            assert text(await client.call_tool("db_ok", {})) == "fine"
            started = time.monotonic()
            exited = await client.call_tool("db_exit", {})
            waited = time.monotonic() - started
        output = gateway.output()

    said = text(exited)
    assert exited.is_error, said
    assert said.startswith("backend 'db': Connection closed: the process exited with code 7"), said
    assert "its last stderr line: fatal: login refused for" in said, said
    assert SECRET not in said and SECRET not in output
    assert waited < 10, waited  # bounded: the wait for the exit status is half a second at most
