"""Workflow runs waiting for a 2026-07-28 client's answers, over the real `vmcp serve` and the SDK's client:
a nested workflow that asks (a step of another workflow runs it) holds no pending slot after its step fails,
and one anonymous client's runs count against `limits.max_pending_calls_per_caller` as one caller (its
address), not as a new caller per request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ASK = {
    "name": "ask2",
    "description": "Asks its user for a name.",
    "steps": [
        {
            "id": "q",
            "type": "elicitation",
            "message": "Name?",
            "requested_schema": {"type": "object", "properties": {"n": {"type": "string"}}},
        }
    ],
}
OUTER = {"name": "outer", "description": "Runs ask2 as its step.", "steps": [{"id": "inner", "tool": "ask2"}]}


def serve(directory: Path, **limits: Any) -> Iterator[Gateway]:
    config = {
        "backends": [demo_backend("d")],
        "workflows": [ASK, OUTER],
        "server": {"max_pending_calls": limits.pop("total")},
        "limits": limits,
        "timeouts": {"input": 300},  # far past the test: a slot held by a stuck run stays held
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


@pytest.fixture
def small_total(tmp_path: Path) -> Iterator[Gateway]:
    yield from serve(tmp_path, total=3)


@pytest.fixture
def per_caller_two(tmp_path: Path) -> Iterator[Gateway]:
    yield from serve(tmp_path, total=6, max_pending_calls_per_caller=2)


def client_from(gateway: Gateway, address: str) -> Client:
    """An anonymous 2026-07-28 client whose connections come from `address` (any of 127.0.0.0/8 reaches the
    loopback): another address is another caller, as the gateway keys anonymous callers."""
    http = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(local_address=address), timeout=60)
    transport = streamable_http_client(gateway.url, http_client=http)
    return Client(transport, mode="auto", elicitation_callback=unanswered)  # type: ignore[arg-type]


async def unanswered(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    raise AssertionError("the test reads the question itself (allow_input_required)")


async def asked(client: Client) -> types.InputRequiredResult:
    result = await client.session.call_tool("ask2", {}, allow_input_required=True)
    assert isinstance(result, types.InputRequiredResult), result
    return result


def text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_nested_asking_runs_hold_no_pending_slot(small_total: Gateway) -> None:
    with anyio.fail_after(90):
        async with client_from(small_total, "127.0.0.1") as first:
            assert first.protocol_version == "2026-07-28"
            nested = [await first.call_tool("outer", {}) for _ in range(5)]  # more than max_pending_calls (3)
        async with client_from(small_total, "127.0.0.2") as other:
            question = await asked(other)
    for result in nested:
        assert result.is_error and "step 'inner' failed" in text(result), text(result)
        assert "cannot ask its client" in text(result), text(result)
    assert question.input_requests and question.request_state


async def test_one_anonymous_client_holds_at_most_its_per_caller_pending_runs(per_caller_two: Gateway) -> None:
    with anyio.fail_after(90):
        async with client_from(per_caller_two, "127.0.0.1") as one, client_from(per_caller_two, "127.0.0.2") as two:
            first = await asked(one)  # each request is a new `anonymous:` id; its address is the same caller
            await asked(one)
            await asked(one)  # past the address's bound: its oldest run ends
            with pytest.raises(MCPError) as refused:
                await one.session.call_tool(
                    "ask2", {}, input_responses={}, request_state=first.request_state, allow_input_required=True
                )
            question = await asked(two)  # another address's budget is its own
    assert "expired" in str(refused.value), refused.value
    assert "limits.max_pending_calls_per_caller" in str(refused.value), refused.value
    assert question.request_state
