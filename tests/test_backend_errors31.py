"""What a client is told when its backend fails, and what counts against the circuit every caller shares, through
a real gateway, real backend processes and the SDK's client.

A failure's client gets what happened in words (the backend restarted, a session could not be opened), never the
text of the exception behind it: that can quote hosts, paths, DSNs, a backend's own words; the log keeps it.
A call that reaches its deadline is a failure of the backend only when no other call to it was answered meanwhile:
a client calling a slow tool past `timeouts.call`, several calls at once, leaves the circuit closed for every other caller.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# What the backends below say in their errors: an operator's to read, no client's.
PRIVATE_HOST = "db-7.internal.example"
PRIVATE_PATH = "/srv/vault/dsn.txt"
PASSWORD = "hunter2-sekret"

# Answers pings until it gets a call, which it never answers; from then on its pings get an error naming a host
# and a path: the health checks restart it, cutting the call off.
PINGS_FAIL_ONCE_CALLED = f"""\
import json, sys

def send(message):
    sys.stdout.write(json.dumps(message) + "\\n")
    sys.stdout.flush()

called = False
for line in sys.stdin:
    request = json.loads(line)
    if "id" not in request or "method" not in request:
        continue
    method, rid, params = request["method"], request["id"], request.get("params") or {{}}
    if method == "initialize":
        result = {{"protocolVersion": params.get("protocolVersion"), "capabilities": {{"tools": {{}}}},
                  "serverInfo": {{"name": "pinged", "version": "1"}}}}
        send({{"jsonrpc": "2.0", "id": rid, "result": result}})
    elif method == "tools/list":
        tool = {{"name": "hang", "description": "Never answers", "inputSchema": {{"type": "object"}}}}
        send({{"jsonrpc": "2.0", "id": rid, "result": {{"tools": [tool]}}}})
    elif method == "tools/call":
        called = True
    elif method == "ping" and called:
        error = {{"code": -32000, "message": "replica {PRIVATE_HOST}:5432 unreachable, see {PRIVATE_PATH}"}}
        send({{"jsonrpc": "2.0", "id": rid, "error": error}})
    elif method == "ping":
        send({{"jsonrpc": "2.0", "id": rid, "result": {{}}}})
    else:
        send({{"jsonrpc": "2.0", "id": rid, "error": {{"code": -32601, "message": "Method not found"}}}})
"""

# The first process (the gateway's shared session) serves; every later one (a client's own session) refuses the
# handshake with a DSN holding its configured password.
ONLY_FIRST_SERVES = f"""\
import json, os, sys

def send(message):
    sys.stdout.write(json.dumps(message) + "\\n")
    sys.stdout.flush()

try:
    os.close(os.open(os.environ["FIRST_MARK"], os.O_CREAT | os.O_EXCL))
    first = True
except FileExistsError:
    first = False
dsn = "postgres://app:" + os.environ["DB_PASSWORD"] + "@{PRIVATE_HOST}/prod"
for line in sys.stdin:
    request = json.loads(line)
    if "id" not in request or "method" not in request:
        continue
    method, rid, params = request["method"], request["id"], request.get("params") or {{}}
    if not first:
        send({{"jsonrpc": "2.0", "id": rid, "error": {{"code": -32603, "message": "cannot reach " + dsn}}}})
    elif method == "initialize":
        result = {{"protocolVersion": params.get("protocolVersion"), "capabilities": {{"tools": {{}}}},
                  "serverInfo": {{"name": "picky", "version": "1"}}}}
        send({{"jsonrpc": "2.0", "id": rid, "result": result}})
    elif method == "tools/list":
        tool = {{"name": "echo", "description": "Echo", "inputSchema": {{"type": "object"}}}}
        send({{"jsonrpc": "2.0", "id": rid, "result": {{"tools": [tool]}}}})
    elif method == "ping":
        send({{"jsonrpc": "2.0", "id": rid, "result": {{}}}})
    else:
        send({{"jsonrpc": "2.0", "id": rid, "error": {{"code": -32601, "message": "Method not found"}}}})
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _backend(gateway: Gateway, name: str) -> dict[str, Any]:
    body = httpx2.get(f"{gateway.base}/readyz", timeout=5).json()
    found: dict[str, Any] = next(b for b in body["backends"] if b["name"] == name)
    return found


async def _until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached within {within}s"
        await anyio.sleep(0.05)


def _script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


async def test_a_call_cut_off_by_a_restart_is_told_why_in_words_not_the_failed_pings_text(tmp_path: Path) -> None:
    config = {
        "backends": [
            {
                "name": "pinged",
                "command": sys.executable,
                "args": [_script(tmp_path, "pinged.py", PINGS_FAIL_ONCE_CALLED)],
            }
        ],
        "health": {"interval": 0.2, "timeout": 5.0, "unhealthy_threshold": 2},
        "timeouts": {"call": 30},
        "failure": {"restart": {"initial_delay": 30, "max_delay": 30}},  # no new session while the test looks
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url, mode="legacy") as client:  # the shared session: the one restarted
            cut = await client.call_tool("pinged_hang", {})
        output = gateway.output()
    told = _text(cut)
    assert cut.is_error and "the gateway restarted the backend (unhealthy after 2 failed pings)" in told, told
    assert PRIVATE_HOST not in told and PRIVATE_PATH not in told, told
    # The operator's log says what the pings got.
    assert f"unhealthy after 2 failed pings: ping failed: replica {PRIVATE_HOST}:5432 unreachable" in output, output


async def _refused_sampling(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.ErrorData:
    return types.ErrorData(code=types.INVALID_REQUEST, message="unused")


async def test_a_clients_session_that_cannot_be_opened_is_told_so_without_the_backends_words(tmp_path: Path) -> None:
    script = _script(tmp_path, "picky.py", ONLY_FIRST_SERVES)
    env = {"DB_PASSWORD": PASSWORD, "FIRST_MARK": str(tmp_path / "first-started")}
    config = {
        "backends": [{"name": "picky", "command": sys.executable, "args": [script], "env": env}],
        "health": {"interval": 600},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        # A client that declares sampling gets a session of its own at the backend: a second process, which refuses.
        async with Client(gateway.url, mode="legacy", sampling_callback=_refused_sampling) as client:
            refused = await client.call_tool("picky_echo", {})
        output = gateway.output()
    told = _text(refused)
    assert refused.is_error and "backend 'picky' could not open a session for this client (MCPError)" in told, told
    assert PASSWORD not in told and PRIVATE_HOST not in told, told
    # The log says why, its password masked.
    assert f"could not open a session for this client: cannot reach postgres://***@{PRIVATE_HOST}/prod" in output, (
        output
    )
    assert PASSWORD not in output, output


@pytest.mark.parametrize("slow", ["past its deadline", "answered past slow_call"])
async def test_slow_calls_leave_the_circuit_closed_while_other_calls_are_answered(tmp_path: Path, slow: str) -> None:
    """One client calls a slow tool, several calls at once, past their deadline or answered past `slow_call`,
    while another client's calls to the same backend are answered. Before, each slow call counted: together they
    opened the circuit for every caller. A backend none of whose calls is answered still opens
    (tests/test_backend_failure_recovery.py)."""
    threshold = 2
    seconds, call_timeout = (30, 3.0) if slow == "past its deadline" else (3, 30.0)
    config = {
        "backends": [demo_backend("slow", call_timeout=call_timeout)],
        "health": {"interval": 600},
        "failure": {"circuit_breaker": {"failure_threshold": threshold, "cooldown": 600, "slow_call": 1.5}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        ended: list[types.CallToolResult] = []
        answered = 0
        async with Client(gateway.url) as greedy, Client(gateway.url) as other:

            async def call_slowly() -> None:
                ended.append(await greedy.call_tool("slow_slow_echo", {"message": "x", "seconds": seconds}))

            async with anyio.create_task_group() as group:
                for _ in range(threshold + 1):
                    group.start_soon(call_slowly)
                # The other client's calls go on until every slow call has ended: some succeed while they run.
                while len(ended) < threshold + 1:
                    quick = await other.call_tool("slow_slow_echo", {"message": "hello", "seconds": 0})
                    assert not quick.is_error and "hello" in _text(quick), _text(quick)
                    answered += 1
                    await anyio.sleep(0.05)
        assert answered > 0
        texts = [_text(r) for r in ended]
        if slow == "past its deadline":
            assert all(r.is_error and "3s (call_timeout of this backend)" in _text(r) for r in ended), texts
        else:
            assert not any(r.is_error for r in ended), texts
        circuit = _backend(gateway, "slow")["circuit"]
        assert circuit["state"] == "closed" and circuit["times_opened"] == 0, circuit
