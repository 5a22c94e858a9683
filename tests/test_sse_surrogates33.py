"""A 2024 SSE backend (`transport: sse`) whose tool description and result hold a lone surrogate escape: its event
stream is mended as bytes, as a streamable HTTP backend's is (backends/http_bodies.py `mend_sse_streams`). Before,
the SDK's parse refused the events: the backend lost all its tools, and a call waited for its timeout. And a `~`
that cannot expand in a stdio backend's `cwd` is kept as written, not a traceback from `vmcp validate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from tests.support import free_port, running_gateway, stop_process, wait_http, write_config

# A hand-written 2024-11-05 SSE MCP server (the SDK's own server refuses to write such text).
SSE_BACKEND = r"""
import asyncio, json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

queue = asyncio.Queue()
TOOLS = '[{"name": "good", "description": "fine", "inputSchema": {"type": "object"}},' \
    ' {"name": "bad", "description": "bad \\ud800 desc", "inputSchema": {"type": "object"}}]'

async def sse(request):
    async def events():
        yield "event: endpoint\ndata: /messages?session_id=1\n\n"
        while True:
            yield f"event: message\ndata: {await queue.get()}\n\n"
    return StreamingResponse(events(), media_type="text/event-stream")

async def messages(request):
    message = json.loads(await request.body())
    ident, method = message.get("id"), message.get("method")
    if ident is None:
        return Response(status_code=202)
    if method == "initialize":
        result = json.dumps({"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                             "serverInfo": {"name": "s", "version": "1"}})
    elif method == "tools/list":
        result = '{"tools": %s}' % TOOLS
    elif method == "tools/call":
        result = '{"content": [{"type": "text", "text": "before \\ud800 after"}], "isError": false}'
    else:
        result = "{}"
    await queue.put('{"jsonrpc": "2.0", "id": %s, "result": %s}' % (json.dumps(ident), result))
    return Response(status_code=202)

app = Starlette(routes=[Route("/sse", sse), Route("/messages", messages, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


async def _listed_and_called(url: str) -> tuple[dict[str, Any], Any]:
    async with Client(url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        return tools, await client.call_tool("old_bad", {})


def test_a_2024_sse_backends_lone_surrogates_are_mended_not_its_tools_lost(tmp_path: Path) -> None:
    script = tmp_path / "sse_backend.py"
    script.write_text(SSE_BACKEND, encoding="utf-8")
    port = free_port()
    backend = subprocess.Popen([sys.executable, str(script), str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/messages", expect=(405,), proc=backend)
        old = {"name": "old", "transport": "sse", "url": f"http://127.0.0.1:{port}/sse"}
        config = write_config(tmp_path, {"backends": [old], "timeouts": {"call": 30}})
        with running_gateway(config) as gateway:
            tools, result = anyio.run(_listed_and_called, gateway.url)
    finally:
        stop_process(backend)
    assert {"old_good", "old_bad"} <= tools.keys()
    assert tools["old_bad"].description == "bad \ufffd desc"
    assert not result.is_error
    assert [getattr(block, "text", None) for block in result.content] == ["before \ufffd after"]


def test_a_tilde_that_cannot_expand_in_cwd_is_kept_as_written_not_a_traceback(tmp_path: Path) -> None:
    backend = {"name": "s", "command": sys.executable, "args": ["-c", "pass"], "cwd": "~no-such-user-33/x"}
    config = write_config(tmp_path, {"backends": [backend]})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert "~no-such-user-33" in done.stderr  # the warning names the directory as written, not found
