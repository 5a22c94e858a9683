"""What one caller, or many, can make the gateway hold: dedicated backend sessions (processes, for stdio
backends) and calls waiting for input are bounded per caller and in total, and idle ones are closed.

A real gateway fronts the conformance backend over stdio; real SDK clients declare sampling, which on the
2025-11-25 handshake earns each its own backend session.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import psutil
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client

from tests.support import EXAMPLES, Gateway, api_keys_file, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
IDLE = 3.0  # limits.dedicated_idle_timeout in these tests


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "limits": {"max_dedicated_sessions": 2, "dedicated_idle_timeout": IDLE},
    }
    with running_gateway(write_config(tmp_path_factory.mktemp("limits"), config)) as running:
        yield running


async def sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="fine"), model="test-model"
    )


def backend_processes(gateway: Gateway) -> int:
    count = 0
    for process in gateway.children():
        try:
            count += any(str(CONFORMANCE_SERVER) in part for part in process.cmdline())
        except psutil.NoSuchProcess:
            continue
    return count


def settles_at(gateway: Gateway, expected: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while backend_processes(gateway) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return backend_processes(gateway)


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def test_many_sampling_clients_hold_at_most_the_total_of_dedicated_sessions_and_all_are_served(
    gateway: Gateway,
) -> None:
    assert settles_at(gateway, 1) == 1  # the shared session's process

    async def main() -> tuple[list[str], int]:
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(Client(gateway.url, mode="legacy", sampling_callback=sampling))
                for _ in range(5)
            ]
            answers = [text(await client.call_tool("test_simple_text", {})) for client in clients]
            during = backend_processes(gateway)
            # The healthz of the gateway and another client's call still answer.
            assert httpx2.get(f"{gateway.base}/healthz", timeout=5).status_code == 200
            return answers, during

    answers, during = anyio.run(main)
    assert len(answers) == 5 and all(answers)  # past the bound, calls go on the shared session
    assert during <= 1 + 2  # the shared process and at most limits.max_dedicated_sessions more
    assert "limits.max_dedicated_sessions" in gateway.output()
    assert gateway.output().count("no dedicated session") == 1  # said once a minute, not per call


def test_an_idle_dedicated_session_is_closed_and_reopened_at_the_next_call(gateway: Gateway) -> None:
    assert settles_at(gateway, 1) == 1

    async def main() -> tuple[int, int, str]:
        async with Client(gateway.url, mode="legacy", sampling_callback=sampling) as client:
            await client.call_tool("test_simple_text", {})
            opened = backend_processes(gateway)
            reaped = await anyio.to_thread.run_sync(settles_at, gateway, 1)  # the client stays connected
            again = await client.call_tool("test_sampling", {"prompt": "still there?"})
            return opened, reaped, text(again)

    opened, reaped, again = anyio.run(main)
    assert opened == 2 and reaped == 1
    assert again == "LLM response: fine"  # reopened: sampling reaches the client again


# --- calls waiting for input, per caller (2026-07-28 clients, told apart by their credential) ----------


@pytest.fixture(scope="module")
def pending_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Callers told apart by verified API keys: an unverified credential is no caller of its own (a client picks
    it freely), so anonymous clients from one address share one budget."""
    directory = tmp_path_factory.mktemp("pending")
    PENDING_KEYS.update(api_keys_file(directory / "keys.json", {"alice": [], "bob": [], "carol": []}))
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "server": {"max_pending_calls": 8, "round_trip_spares": False},
        "limits": {"max_pending_calls_per_caller": 1},
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        # Every call's events, so the test can see which operations the gateway ran for it.
        "telemetry": {"audit": {"enabled": True, "output": "audit.jsonl"}},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


PENDING_KEYS: dict[str, str] = {}  # subject -> API key, made by `pending_gateway`


def as_caller(gateway: Gateway, subject: str, **options: object) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {PENDING_KEYS[subject]}"})
    return Client(streamable_http_client(gateway.url, http_client=http), **options)  # type: ignore[arg-type]


async def first_round(client: Client) -> types.InputRequiredResult:
    result = await client.session.call_tool("test_sampling", {"prompt": "q"}, allow_input_required=True)
    assert isinstance(result, types.InputRequiredResult) and result.request_state
    return result


def test_one_caller_waiting_for_its_own_input_cannot_lock_out_another(pending_gateway: Gateway) -> None:
    async def main() -> tuple[str, str]:
        async with (
            as_caller(pending_gateway, "alice", sampling_callback=sampling) as alice,
            as_caller(pending_gateway, "bob", sampling_callback=sampling) as bob,
        ):
            await first_round(alice)  # alice's call now waits for her answer: her one allowed
            # Her next call ends her oldest round (a client cannot say it gave up on one) instead of being refused.
            second = await first_round(alice)
            waiting = await first_round(bob)  # bob's budget is his own: his round is untouched by hers
            return str(second.request_state), str(waiting.request_state)

    alices_state, bobs_state = anyio.run(main)
    assert alices_state and bobs_state


def test_a_2026_call_with_arguments_looks_up_one_schema_not_the_whole_list(pending_gateway: Gateway) -> None:
    """The transport's Mcp-Param header check asks the router for the one tool's schema: no tools/list runs."""
    audit = pending_gateway.log.parent / "audit.jsonl"  # relative to the config file's directory

    async def main() -> None:
        async with as_caller(pending_gateway, "carol") as carol:
            for _ in range(4):
                assert not (await carol.call_tool("test_slow", {"seconds": 0})).is_error

    before = len(audit_quiet(audit))  # earlier tests' events are written in batches: all of them first
    anyio.run(main)
    new = audit_settles(audit, before, 4)
    # The client may list the tools itself, once (the SDK caches their output schemas); a listing per call
    # by the transport's header check would be one per call.
    assert new.count("mcp_tool_call") == 4 and new.count("mcp_tools_list") <= 1, new


def audit_types(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["type"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def audit_quiet(path: Path, timeout: float = 15.0) -> list[str]:
    """The events once the writer has written everything it was given (no new line for half a second; it
    writes in batches every `telemetry.audit.flush_interval`, 0.1 s)."""
    deadline = time.monotonic() + timeout
    seen = audit_types(path)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = audit_types(path)
        if len(now) == len(seen):
            return now
        seen = now
    return seen


def audit_settles(path: Path, before: int, tool_calls: int, timeout: float = 15.0) -> list[str]:
    """The events after the first `before`, once `tool_calls` calls are among them (a writer thread logs them)."""
    deadline = time.monotonic() + timeout
    while True:
        new = audit_types(path)[before:]
        if new.count("mcp_tool_call") >= tool_calls or time.monotonic() > deadline:
            return new
        time.sleep(0.1)
