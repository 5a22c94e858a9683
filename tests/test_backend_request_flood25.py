"""A backend's own requests to the gateway (ping, sampling, roots…) on its shared session are bounded.

Against a real gateway process and a real stdio backend that floods it with `ping` requests while it does not
read its stdin: the SDK answered each in a task of its own, all waiting to write, so the gateway held one task and
one answer per request (200,000 pings: 1.5 GB) until the health checker restarted the backend. Now at most
`MAX_REQUESTS_IN_FLIGHT` wait for their answers; the rest are refused at once with a JSON-RPC error, or dropped
when the backend does not even take those, and the gateway keeps serving its other backends meanwhile.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import CallToolResult, TextContent

from tests.support import demo_backend, running_gateway, write_config
from vmcp_opt.backends.backend_requests import TOO_MANY

pytestmark = [pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# JSON-RPC by hand. Its tool `flood` writes `n` pings without reading its stdin meanwhile (its stdin pipe at its
# smallest, so the gateway's answers fill it after about a hundred), then answers the call and reads on, counting
# the answers its pings get; `counts` tells them.
FLOODING_BACKEND = r"""
import fcntl
import json
import sys

fcntl.fcntl(0, fcntl.F_SETPIPE_SZ, 4096)
TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("flood", "counts")]
counts = {"served": 0, "refused": 0, "other": 0}


def write(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def answer(request_id, result):
    write({"jsonrpc": "2.0", "id": request_id, "result": result})


def text(value):
    return {"content": [{"type": "text", "text": json.dumps(value)}]}


for line in sys.stdin:
    message = json.loads(line)
    if "method" not in message:  # an answer to one of our pings
        if "result" in message:
            counts["served"] += 1
        elif message.get("error") == {"code": -32000, "message": "too many requests in flight from this backend", "data": {"most": 32}}:
            counts["refused"] += 1
        else:
            counts["other"] += 1
        continue
    if "id" not in message:
        continue
    request_id, method, params = message["id"], message["method"], message.get("params") or {}
    if method == "initialize":
        info = {"name": "flooding", "version": "1"}
        answer(request_id, {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": info})
    elif method == "tools/list":
        answer(request_id, {"tools": TOOLS})
    elif method == "tools/call" and params["name"] == "flood":
        for n in range(params["arguments"]["n"]):
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": f"p{n}", "method": "ping"}) + "\n")
        answer(request_id, text("sent"))
    elif method == "tools/call":
        answer(request_id, text(counts))
    else:
        answer(request_id, {})
"""

# Pings in the flood: many times what the backend's stdin pipe, the bound and the refusals' queue hold together.
PINGS = 20_000


def _value(result: CallToolResult) -> Any:
    assert not result.is_error, result
    block = result.content[0]
    assert isinstance(block, TextContent)
    return json.loads(block.text)


async def test_a_backend_flooding_the_gateway_with_requests_has_the_excess_refused(tmp_path: Path) -> None:
    script = tmp_path / "flooding_backend.py"
    script.write_text(FLOODING_BACKEND, encoding="utf-8")
    config = {
        "backends": [demo_backend("demo"), {"name": "flooding", "command": sys.executable, "args": [str(script)]}],
        "health": {"enabled": False},  # no restart of the flooding backend halfway through the test
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            assert _value(await client.call_tool("flooding_flood", {"n": PINGS})) == "sent"
            # The gateway's other backends are served all along.
            note = await client.call_tool("demo_save_note", {"title": "t", "text": "x"})
            assert not note.is_error
            # Its stdin read again, the backend takes what the gateway wrote it: answers and refusals. Before the
            # bound, every ping was answered (a task and an answer each held meanwhile) and none refused.
            with anyio.fail_after(60):
                while True:
                    counts = _value(await client.call_tool("flooding_counts", {}))
                    if counts["refused"] > 0 or counts["served"] >= PINGS:
                        break
                    await anyio.sleep(0.1)
    assert counts["refused"] > 0, counts
    assert counts["other"] == 0, counts
    # Most were dropped unanswered: the backend did not read its answers while it sent them. It reads again once
    # the last ping is written, when the pipes and the gateway's read buffers hold at most ~300 KB (~6,000 pings).
    assert counts["served"] + counts["refused"] < PINGS // 2, counts
    log = gateway.output()
    assert f"backend flooding: {TOO_MANY}" in log
    # One warning a minute, not one a request (thousands were refused or dropped): a run slowed past a minute of
    # flooding may show a second.
    assert 1 <= log.count(TOO_MANY) <= 3, log
