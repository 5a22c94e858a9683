"""Workflow runs a 2026-07-28 client gave up on: they must not lock the caller out of its asking tools and workflows.

A client cannot say its user closed a question's dialog, so at `limits.max_pending_calls_per_caller` a new call or
workflow run ends the caller's round that waited longest, of either kind (a backend call asking its client, a
workflow run asking its user), instead of being refused for `timeouts.input`. The ended run's steps are cancelled at
their backend and audited as such, its retry told it expired; never another caller's round, and past
`server.max_pending_calls` a new round is still refused.

Real `vmcp serve` processes in front of examples/backends/chatty_asker.py (a call that asks its client for sampling)
and the conformance server (`test_slow`, which counts its cancelled calls), the SDK's client in 2026-07-28 mode.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import EXAMPLES, Gateway, free_port, running_gateway, serving_mcp, wait_until, write_config
from tests.test_abandoned_asks33 import asker_processes

pytestmark = [pytest.mark.slow]

ASKER = EXAMPLES / "backends" / "chatty_asker.py"
CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
PER_CALLER = 2
ASK = {"kind": "sampling", "count": 1}
WORKFLOW = {
    "name": "ask_while_working",
    "description": "Asks its user while a slow step works beside the question.",
    "steps": [
        {"id": "work", "tool": "conformance_test_slow", "arguments": {"seconds": 300}},
        {
            "id": "ask",
            "type": "elicitation",
            "message": "Go on?",
            "requested_schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
        },
    ],
}
DEADLINE = 60.0  # a guard against hanging, not a measure


@dataclass(frozen=True)
class Served:
    gateway: Gateway
    backend: str  # the conformance server's URL: it says how many of its slow calls were cancelled
    audit: Path


def serve(directory: Path, total: int = 64) -> Iterator[Served]:
    port = free_port()
    with serving_mcp([sys.executable, str(CONFORMANCE_SERVER), "--http", "--port", str(port)], port) as backend:
        yield from _gateway(directory, backend, total)


def _gateway(directory: Path, backend: str, total: int) -> Iterator[Served]:
    config = {
        "backends": [
            {"name": "asker", "command": sys.executable, "args": [str(ASKER)]},
            {"name": "conformance", "transport": "streamable-http", "url": backend},
        ],
        "workflows": [WORKFLOW],
        # A drain would wait for the runs' slow steps: the stop cancels them at once.
        "server": {"round_trip_spares": False, "max_pending_calls": total, "drain_timeout": 0.1},
        "limits": {"max_pending_calls_per_caller": PER_CALLER},
        "timeouts": {"input": 300},  # far past the test: only an eviction ends a round here
        "health": {"interval": 600},
        "telemetry": {"audit": {"enabled": True, "output": str(directory / "audit.log")}},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield Served(running, backend, directory / "audit.log")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path)


@pytest.fixture
def small_total(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path, total=PER_CALLER + 1)


async def unanswered(context: Any, params: Any) -> Any:
    raise AssertionError("a 2026-07-28 round is answered by a retry, not a callback")


def client_from(gateway: Gateway, address: str = "127.0.0.1") -> Client:
    """An anonymous 2026-07-28 client whose connections come from `address`: another address is another caller."""
    http = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(local_address=address), timeout=DEADLINE)
    transport = streamable_http_client(gateway.url, http_client=http)
    return Client(
        transport,  # type: ignore[arg-type]
        mode="2026-07-28",
        sampling_callback=unanswered,
        elicitation_callback=unanswered,
    )


async def run(client: Client) -> types.InputRequiredResult:
    result = await client.session.call_tool("ask_while_working", {}, allow_input_required=True)
    assert isinstance(result, types.InputRequiredResult) and result.input_requests, result
    return result


async def ask(client: Client) -> types.InputRequiredResult:
    result = await client.session.call_tool("asker_ask_client", ASK, allow_input_required=True)
    assert isinstance(result, types.InputRequiredResult) and result.input_requests, result
    return result


def answers(round_: types.InputRequiredResult) -> dict[str, Any]:
    """An answer of the right kind to each of the round's questions."""
    given: dict[str, Any] = {}
    for key, question in round_.input_requests.items():
        if isinstance(question, types.ElicitRequest):
            given[key] = types.ElicitResult(action="accept", content={"ok": True})
        else:
            text = types.TextContent(type="text", text="late")
            given[key] = types.CreateMessageResult(role="assistant", content=text, model="m")
    return given


async def retry(client: Client, tool: str, round_: types.InputRequiredResult, answered: bool = True) -> str:
    """The retry's error message, or "accepted"; one not `answered` gets the round's open questions again."""
    arguments = {} if tool == "ask_while_working" else ASK
    try:
        await client.session.call_tool(
            tool,
            arguments,
            input_responses=answers(round_) if answered else {},
            request_state=round_.request_state,
            allow_input_required=True,
        )
    except MCPError as exc:
        return exc.error.message
    return "accepted"


async def backend_says(url: str, tool: str) -> int:
    """A count the conformance server keeps of its `test_slow` calls, asked directly (not through the gateway)."""
    async with Client(url) as backend:
        [text] = (await backend.call_tool(tool, {})).content
        assert isinstance(text, types.TextContent)
        return int(text.text)


async def until_backend_says(url: str, tool: str, count: int) -> None:
    with anyio.fail_after(DEADLINE):
        while await backend_says(url, tool) != count:  # noqa: ASYNC110 - another process
            await anyio.sleep(0.05)


def audited(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


def cancelled(log: Path, kind: str) -> list[str]:
    """The workflow ids of the `kind` events (a run's end, a step's) audited `cancelled`."""
    return [e["target"]["workflow_id"] for e in audited(log) if e["type"] == kind and e["outcome"] == "cancelled"]




def test_a_run_past_the_callers_pending_bound_ends_its_oldest_abandoned_run(served: Served) -> None:
    """The user dismissed each run's question: the next run still gets its question; the oldest run's slow step is
    cancelled at its backend, the run audited cancelled, and its retry hears it expired."""

    async def main() -> str:
        async with client_from(served.gateway) as client:
            first = await run(client)
            for count in range(2, PER_CALLER + 1):
                await run(client)
                await until_backend_says(served.backend, "test_running_calls", count)
            await run(client)  # past the bound: ends the first
            await until_backend_says(served.backend, "test_cancelled_calls", 1)
            await until_backend_says(served.backend, "test_running_calls", PER_CALLER)
            return await retry(client, "ask_while_working", first)

    expired = anyio.run(main)
    assert "workflow run that expired" in expired and "call again without requestState" in expired, expired
    assert f"limits.max_pending_calls_per_caller, {PER_CALLER}" in expired, expired
    log = served.audit
    wait_until(lambda: cancelled(log, "workflow_failed"), DEADLINE, lambda: json.dumps(audited(log)[-5:]))
    first_run = next(e["target"]["workflow_id"] for e in audited(log) if e["type"] == "workflow_started")
    assert cancelled(log, "workflow_failed") == [first_run], audited(log)
    steps = [e for e in audited(log) if e["type"] == "workflow_step_failed" and e["target"]["workflow_id"] == first_run]
    assert {(e["target"]["step_id"], e["outcome"]) for e in steps} == {("work", "cancelled"), ("ask", "cancelled")}


def test_a_call_and_a_run_at_the_bound_end_the_oldest_round_of_either_kind(served: Served) -> None:
    """One rule for both kinds: a backend call ends the oldest round, a run; then a run ends the oldest, a call."""

    async def main() -> tuple[str, str]:
        async with client_from(served.gateway) as client:
            oldest_run = await run(client)
            oldest_call = await ask(client)
            await ask(client)  # ends the run
            await until_backend_says(served.backend, "test_cancelled_calls", 1)
            await run(client)  # ends the first call
            return (
                await retry(client, "ask_while_working", oldest_run),
                await retry(client, "asker_ask_client", oldest_call),
            )

    run_expired, call_expired = anyio.run(main)
    assert "workflow run that expired" in run_expired and "limits.max_pending_calls_per_caller" in run_expired
    assert "call that expired" in call_expired and "limits.max_pending_calls_per_caller" in call_expired
    # The shared session's process and the one waiting call's: the ended call's backend session is gone.
    gateway = served.gateway
    wait_until(lambda: asker_processes(gateway) <= 2, DEADLINE, lambda: f"{asker_processes(gateway)}")


def test_the_total_still_refuses_and_another_callers_round_is_never_ended(small_total: Served) -> None:
    """Past `server.max_pending_calls` a caller under its own bound is refused; one at its bound ends its own
    oldest round, not the other caller's."""

    async def main() -> tuple[str, str, str]:
        gateway = small_total.gateway
        async with client_from(gateway, "127.0.0.1") as alice, client_from(gateway, "127.0.0.2") as bob:
            alices = [await run(alice) for _ in range(PER_CALLER)]
            bobs = await run(bob)  # the gateway now holds its total
            try:
                await run(bob)
                refused = "accepted"
            except MCPError as exc:
                refused = exc.error.message
            await run(alice)  # at her own bound: ends her oldest
            return (
                refused,
                await retry(alice, "ask_while_working", alices[0]),
                await retry(bob, "ask_while_working", bobs, answered=False),
            )

    refused, alices_oldest, bobs = anyio.run(main)
    assert "server.max_pending_calls" in refused, refused
    assert "workflow run that expired" in alices_oldest, alices_oldest
    # Bob's run goes on: a retry without answers gets its question again.
    assert bobs == "accepted", bobs
