"""What a client is told of a stdio backend that died: its state, and for the call its process died in the exit
code, never its last words (exception text, its last stderr line: hosts, paths, DSNs), which stay in /readyz and
the log. Two paths carried them to clients: the call that killed the process ("Connection closed: the process
exited with code 3; its last stderr line: ..."), and a call reaching a backend that is no longer ready ("backend
'x' is failed: <its last error>"), here held at its approval while the backend dies (mid-call, or at its restart).

Real gateways, a stdio backend written here and the SDK's client."""

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
from mcp.client.context import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client

from tests.scripted_backend import SCRIPT
from tests.support import Gateway, policed_config, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# What the process writes to stderr as it dies in a call, and at a start that fails: hosts, paths, DSNs.
MID_CALL_WORDS = "FATAL dsn=postgresql://db-payroll.corp.internal/payroll"
START_WORDS = "FATAL: cannot open /srv/payroll/prod.yaml"
LEAKED = ("db-payroll", "/srv/payroll", "FATAL", "stderr")

# The scripted backend (`ok` answers; `exit` writes the mid-call words to stderr and exits with code 3), unless
# the marker file exists: then it fails at start with other last words (a restart that fails).
PAYROLL_BACKEND = f"""
import os, sys
if os.path.exists(sys.argv[1]):
    sys.stderr.write({START_WORDS!r} + "\\n")
    sys.exit(4)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""

# Every call allowed; `payroll_ok` only once the user approved it (asked by elicitation).
POLICY = """\
permit(principal in Group::"staff", action, resource);
@approval("Looking up pay needs the user's yes.")
permit(principal, action == Action::"call_tool", resource == Tool::"payroll_ok");
"""

NO_RESTART = {"restart": {"enabled": False}}
# Restarted at once; the restarts fail at start (`marker`), so it is never ready again in the test.
RESTART = {"restart": {"enabled": True, "initial_delay": 0.1, "max_delay": 0.5}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def payroll(directory: Path) -> dict[str, Any]:
    path = directory / "payroll_backend.py"
    path.write_text(PAYROLL_BACKEND, encoding="utf-8")
    scripted = [str(SCRIPT), "--exit-in-call", "3", "--last-words", MID_CALL_WORDS]
    return {"name": "payroll", "command": sys.executable, "args": [str(path), str(marker(directory)), *scripted]}


def marker(directory: Path) -> Path:
    """Once it exists, the backend's processes fail at start."""
    return directory / "fail-at-start"


def settings(directory: Path, failure: dict[str, Any]) -> dict[str, Any]:
    return {"backends": [payroll(directory)], "health": {"enabled": False}, "failure": failure}


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def assert_no_last_words(message: str) -> None:
    leaked = [word for word in LEAKED if word in message]
    assert not leaked, f"the backend's last words reached the client ({leaked}): {message}"


def readyz_backend(gateway: Gateway) -> dict[str, Any]:
    """The backend's detail in /readyz, as loopback reads it."""
    body = httpx2.get(f"{gateway.base}/readyz", timeout=10).json()
    found: dict[str, Any] = next(b for b in body["backends"] if b["name"] == "payroll")
    return found


async def eventually(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await anyio.sleep(0.1)


async def sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="ok"), model="m")


@pytest.mark.parametrize("session", ["shared", "own"])
async def test_the_call_a_process_dies_in_is_told_its_exit_code_not_its_last_stderr_line(
    tmp_path: Path, session: str
) -> None:
    """`own`: a 2025-11-25 client that can answer sampling has a process of its own (backends/session_pool.py)."""
    failure = {**NO_RESTART, "circuit_breaker": {"failure_threshold": 1, "cooldown": 60.0}}
    with running_gateway(write_config(tmp_path, settings(tmp_path, failure))) as gateway:
        client = Client(gateway.url, mode="legacy", sampling_callback=sampling) if session == "own" else None
        async with client or Client(gateway.url) as caller:
            assert text(await caller.call_tool("payroll_ok", {})) == "fine"
            killed = await caller.call_tool("payroll_exit", {})
        # The operator's detail stays: the circuit the call opened says the last words in /readyz.
        await eventually(lambda: readyz_backend(gateway)["circuit"]["state"] == "open", "the circuit open")
        circuit = readyz_backend(gateway)["circuit"]["reason"]
        output = gateway.output()
    message = text(killed)
    assert killed.is_error, message
    assert "backend 'payroll': Connection closed: the process exited with code 3" in message, message
    assert_no_last_words(message)
    assert f"its last stderr line: {MID_CALL_WORDS}" in circuit, circuit
    assert MID_CALL_WORDS in output


@pytest.mark.parametrize(
    ("failure", "words"), [(NO_RESTART, MID_CALL_WORDS), (RESTART, START_WORDS)], ids=["mid-call", "at-start"]
)
async def test_a_call_reaching_a_backend_no_longer_ready_is_told_its_state_not_its_last_error(
    tmp_path: Path, failure: dict[str, Any], words: str
) -> None:
    """The call passed the catalogue while the backend was ready, then waited for its user's approval; meanwhile
    the backend died (`mid-call`) or died and failed its restart (`at-start`): the backend's own request then
    refuses it (backends/connection.py, `_require_session`)."""
    config, keys = policed_config(tmp_path, {"alice": ["staff"], "bob": ["staff"]}, POLICY, settings(tmp_path, failure))
    asked, approved = anyio.Event(), anyio.Event()

    async def approve_once_told(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.set()
        await approved.wait()
        return types.ElicitResult(action="accept", content={"approve": True})

    def client(key: str, **callbacks: Any) -> Client:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
        return Client(streamable_http_client(gateway.url, http_client=http), mode="legacy", **callbacks)

    def detail_kept() -> bool:
        backend = readyz_backend(gateway)
        return backend["state"] != "ready" and words in (backend["last_error"] or "")

    results: list[types.CallToolResult] = []

    async def look_up(alice: Client) -> None:
        results.append(await alice.call_tool("payroll_ok", {}))

    with running_gateway(config) as gateway:
        alice, bob = client(keys["alice"], elicitation_callback=approve_once_told), client(keys["bob"])
        async with alice, bob, anyio.create_task_group() as task_group:
            task_group.start_soon(look_up, alice)
            await asked.wait()
            if failure is RESTART:
                marker(tmp_path).touch()  # the running process is unchanged; the restarted ones fail at start
            await bob.call_tool("payroll_exit", {})
            await eventually(detail_kept, "the backend down, its last error in /readyz")
            approved.set()
        output = gateway.output()
    [refused] = results
    message = text(refused)
    assert refused.is_error, message
    assert message.startswith("backend 'payroll' is "), message
    assert_no_last_words(message)
    assert f"its last stderr line: {words}" in output  # the log keeps it
