"""A backend's own requests that the SDK answers itself are bounded on a client's dedicated session too.

A 2025-11-25 client that can answer roots gets a backend session of its own (a process of its own, for a stdio
backend). There the backend's sampling, elicitation and roots requests are bounded by `AskBound`, but a `ping`,
a method the gateway does not know, or a request for a capability the client lacks is answered by the SDK in a
task of its own, all waiting to write while the backend does not read: a flood piled up a task and an answer per
request, without bound. Now at most `MAX_REQUESTS_IN_FLIGHT` of those wait for their answers; the rest are
refused at once with a JSON-RPC error (or dropped when the backend does not even take those), as on the shared
session, while what the backend asks the client is still counted by `AskBound` alone
(tests/test_backend_asks_bound.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext

from tests.support import Gateway, demo_backend, running_gateway, write_config
from vmcp_opt.backends.backend_requests import MAX_REQUESTS_IN_FLIGHT, TOO_MANY, TOO_MANY_CODE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

# JSON-RPC by hand. Its tool `flood` writes `n` requests of `method` without reading its stdin meanwhile (its
# stdin pipe at its smallest, so the gateway's answers fill it soon), then answers the call and reads on,
# counting the answers its requests get; `counts` tells them, and whether this process's session declared roots
# (the dedicated session mirrors its client's capabilities; the shared one declares none).
FLOODING_BACKEND = r"""
import fcntl
import json
import sys

fcntl.fcntl(0, fcntl.F_SETPIPE_SZ, 4096)
TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("flood", "counts")]
REFUSAL = __REFUSAL__
counts = {"answered": 0, "refused": 0, "roots": False}


def write(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def answer(request_id, result):
    write({"jsonrpc": "2.0", "id": request_id, "result": result})


def text(value):
    return {"content": [{"type": "text", "text": json.dumps(value)}]}


for line in sys.stdin:
    message = json.loads(line)
    if "method" not in message:  # an answer to one of our requests: the SDK's, or the gateway's refusal
        counts["refused" if message.get("error") == REFUSAL else "answered"] += 1
        continue
    if "id" not in message:
        continue
    request_id, method, params = message["id"], message["method"], message.get("params") or {}
    if method == "initialize":
        counts["roots"] = "roots" in params["capabilities"]
        info = {"name": "flooding", "version": "1"}
        answer(request_id, {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": info})
    elif method == "tools/list":
        answer(request_id, {"tools": TOOLS})
    elif method == "tools/call" and params["name"] == "flood":
        arguments = params["arguments"]
        for n in range(arguments["n"]):
            request = {"jsonrpc": "2.0", "id": f"f{n}", "method": arguments["method"], "params": arguments["params"]}
            sys.stdout.write(json.dumps(request) + "\n")
        answer(request_id, text("sent"))
    elif method == "tools/call":
        answer(request_id, text(counts))
    else:
        answer(request_id, {})
""".replace("__REFUSAL__", repr({"code": TOO_MANY_CODE, "message": TOO_MANY, "data": {"most": MAX_REQUESTS_IN_FLIGHT}}))

# Requests in the flood: many times what the backend's stdin pipe, the bound and the refusals' queue hold together.
FLOOD = 20_000
SAMPLING = {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}], "maxTokens": 1}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("dedicated_flood")
    script = directory / "flooding_backend.py"
    script.write_text(FLOODING_BACKEND, encoding="utf-8")
    config = {
        "backends": [
            demo_backend("demo"),
            {"name": "flooding", "command": sys.executable, "args": [str(script)], "roots": "relay"},
        ],
        "health": {"enabled": False},  # no restart of the flooding backend halfway through a test
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


def _value(result: types.CallToolResult) -> Any:
    assert not result.is_error, result
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return json.loads(block.text)


async def _roots(context: ClientRequestContext) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[])


async def _flood(gateway: Gateway, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """What the backend's `counts` says once its flood of `method` on this client's dedicated session is settled."""
    # A client that answers roots: its calls go on a dedicated session, a flooding process of its own.
    async with Client(gateway.url, mode="legacy", list_roots_callback=_roots) as client:
        flood = {"n": FLOOD, "method": method, "params": params}
        assert _value(await client.call_tool("flooding_flood", flood)) == "sent"
        # The gateway's other backends are served all along.
        assert not (await client.call_tool("demo_save_note", {"title": "t", "text": "x"})).is_error
        # Its stdin read again, the backend takes what the gateway wrote it: answers and refusals. Before the
        # bound every request was answered (a task and an answer each held meanwhile) and none refused.
        with anyio.fail_after(60):
            while True:
                counts: dict[str, Any] = _value(await client.call_tool("flooding_counts", {}))
                if counts["refused"] > 0 or counts["answered"] >= FLOOD:
                    return counts
                await anyio.sleep(0.1)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ping", {}),
        ("no/such/method", {}),  # the SDK answers "Method not found"
        ("sampling/createMessage", SAMPLING),  # the client cannot sample: the SDK answers with an error
    ],
)
async def test_a_flood_the_sdk_answers_on_a_dedicated_session_has_the_excess_refused(
    gateway: Gateway, method: str, params: dict[str, Any]
) -> None:
    counts = await _flood(gateway, method, params)
    assert counts["roots"] is True, "the flood was not on the client's dedicated session"
    assert counts["refused"] > 0, counts
    # Most were dropped unanswered: the backend did not read its answers while it sent them.
    assert counts["answered"] + counts["refused"] < FLOOD // 2, counts
    log = gateway.output()
    assert f"backend flooding: {TOO_MANY}" in log
    # One warning a minute per backend, not one a request (tens of thousands were refused or dropped).
    assert log.count(TOO_MANY) <= 3, log
