"""Hostile 2026-07-28 clients against a real gateway: a round (`InputRequiredResult` and its sealed
`request_state`) belongs to the caller it was handed to, and one client's listen streams share one bound.

A real `vmcp serve` with API keys in front of the conformance backend (its `test_sampling` asks the client
for a sampling answer mid-call), real SDK clients on the 2026-07-28 revision.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import EXAMPLES, Gateway, api_keys_file, running_gateway, write_config

pytestmark = [pytest.mark.slow]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"

# A 2026-07-28 backend taking listen streams for any `notes://` URI.
NOTES_BACKEND = """
from mcp.server.mcpserver import MCPServer

server = MCPServer("notes")


@server.resource("notes://{name}")
def note(name: str) -> str:
    return f"note {name}"


server.run()
"""
MOST_PER_CALLER = 2  # limits.max_subscriptions_per_caller here


async def _answer_sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="x"), model="m")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    directory: Path = tmp_path_factory.mktemp("roundsaudit")
    keys = api_keys_file(directory / "keys.json", {"alice": ["team"], "bob": ["team"]})
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        "server": {"round_trip_spares": False},
        "health": {"interval": 600},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running, keys


@pytest.fixture(scope="module")
def anonymous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """No authentication: every 2026-07-28 request is a caller of its own, from one address."""
    directory: Path = tmp_path_factory.mktemp("roundsaudit-anonymous")
    (directory / "notes_backend.py").write_text(NOTES_BACKEND, encoding="utf-8")
    config = {
        "backends": [{"name": "notes", "command": sys.executable, "args": [str(directory / "notes_backend.py")]}],
        "limits": {"max_subscriptions_per_caller": MOST_PER_CALLER},
        "health": {"interval": 600},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


def _client(url: str, credential: str | None) -> Client:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    http = httpx2.AsyncClient(headers=headers, timeout=60)
    transport = streamable_http_client(url, http_client=http)
    return Client(transport, mode="2026-07-28", sampling_callback=_answer_sampling)  # type: ignore[arg-type]


def _answers(first: types.InputRequiredResult) -> types.InputResponses:
    assert first.input_requests
    answer = types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="x"), model="m")
    return {key: answer for key in first.input_requests}


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def test_another_callers_request_state_is_refused_and_the_owner_still_continues(
    served: tuple[Gateway, dict[str, str]],
) -> None:
    gateway, keys = served

    async def main() -> tuple[str, str]:
        async with _client(gateway.url, keys["alice"]) as alice, _client(gateway.url, keys["bob"]) as bob:
            first = await alice.session.call_tool("test_sampling", {"prompt": "q"}, allow_input_required=True)
            assert isinstance(first, types.InputRequiredResult) and first.request_state
            try:
                # Bob came by Alice's state (a log, a shared proxy): same tool, same arguments, his answers.
                stolen = await bob.session.call_tool(
                    "test_sampling",
                    {"prompt": "q"},
                    input_responses=_answers(first),
                    request_state=first.request_state,
                    allow_input_required=True,
                )
                refused = f"accepted: {stolen}"
            except MCPError as exc:
                refused = exc.error.message
            done = await alice.session.call_tool(
                "test_sampling",
                {"prompt": "q"},
                input_responses=_answers(first),
                request_state=first.request_state,
                allow_input_required=True,
            )
            assert isinstance(done, types.CallToolResult)
            return refused, _text(done)

    refused, done = anyio.run(main)
    assert refused == "Invalid or expired requestState"
    assert done == "LLM response: x"  # the round was still Alice's to finish


def test_one_anonymous_clients_listen_streams_share_the_callers_bound(anonymous: Gateway) -> None:
    """Unverified 2026-07-28 requests are a new `Caller.id` each: the bound is the client's address's."""

    async def main() -> tuple[list[str] | None, list[str] | None]:
        wanted_first = [f"notes://a{i}" for i in range(MOST_PER_CALLER)]
        # Entered in order: the second stream is opened once the first one is acknowledged.
        async with (
            _client(anonymous.url, None) as first,
            _client(anonymous.url, None) as second,
            first.listen(resource_subscriptions=wanted_first) as one,
            second.listen(resource_subscriptions=["notes://b0", "notes://b1"]) as two,
        ):
            return one.honored.resource_subscriptions, two.honored.resource_subscriptions

    one, two = anyio.run(main)
    assert one == [f"notes://a{i}" for i in range(MOST_PER_CALLER)]
    assert two is None  # the address's bound is taken by the first stream


def test_one_anonymous_clients_pending_rounds_share_the_callers_bound(tmp_path: Path) -> None:
    """Without authentication every 2026-07-28 request is a caller id of its own: the pending-rounds bound is
    keyed by the client's address instead, so requests from one address cannot each hold another round."""
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "server": {"round_trip_spares": False},
        "limits": {"max_pending_calls_per_caller": 1},
        "health": {"interval": 600},
    }

    async def main(url: str) -> str:
        async with _client(url, None) as first, _client(url, None) as second:
            waiting = await first.session.call_tool("test_sampling", {"prompt": "q"}, allow_input_required=True)
            assert isinstance(waiting, types.InputRequiredResult)
            # The address's one round is the first client's: the second's call ends it to make room.
            again = await second.session.call_tool("test_sampling", {"prompt": "q"}, allow_input_required=True)
            assert isinstance(again, types.InputRequiredResult)
            with pytest.raises(MCPError) as expired:
                await first.session.call_tool(
                    "test_sampling",
                    {"prompt": "q"},
                    input_responses=_answers(waiting),
                    request_state=waiting.request_state,
                    allow_input_required=True,
                )
            return expired.value.error.message

    with running_gateway(write_config(tmp_path, config)) as gateway:
        message = anyio.run(main, gateway.url)
    assert "expired" in message and "limits.max_pending_calls_per_caller" in message, message
