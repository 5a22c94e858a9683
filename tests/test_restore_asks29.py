"""Two calls of one 2025-11-25 session at once on a replica that must restore it (`sessions.store: redis`), each
asking the client something (elicitation): both questions reach the client and both calls get their answers.

Real replicas on a real Redis, the SDK client, each POST sent where the test says: the session opens on A (its
GET stream too, and every answer goes there); both calls go to B at once. The backend asks only once both calls are
in flight on its one session (tests/paired_asks_backend29.py), so neither question can tell its call from the
other by timing. Such a question went to the copy's standalone stream (routing/dedicated.py, `_target`): on B
there was none (the client's GET is held by A), both questions were lost and both calls waited out
`timeouts.input`. The same on the home replica when the client's GET stream is held by the other one.
"""

from __future__ import annotations

import json
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

from tests.redis_server import running_redis
from tests.support import Gateway, running_gateways, write_config

pytestmark = [pytest.mark.slow]

BACKEND = Path(__file__).parent / "paired_asks_backend29.py"
CALL_GUARD = 60.0  # a guard against hanging, not a measure


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Gateway]]:
    directory = tmp_path_factory.mktemp("restore_asks29")
    with running_redis() as redis:
        config = {
            "backends": [{"name": "paired", "command": sys.executable, "args": [str(BACKEND)]}],
            "optimizer": {"enabled": False},
            "redis": {"url": redis.url, "timeout": 1.0},
            "sessions": {"store": "redis"},
            # A lost question fails its call after this, instead of holding it for the default 300 s.
            "timeouts": {"input": 15},
        }
        with running_gateways(write_config(directory, config), 2) as replicas:
            yield replicas


class CallsTo(httpx2.AsyncBaseTransport):
    """Sends `tools/call` POSTs to `calls`, the GET stream to `listen`, every other request (initialize, answers,
    DELETE) to `home`."""

    def __init__(self, home: Gateway, calls: Gateway, listen: Gateway) -> None:
        self.home, self.calls, self.listen = home, calls, listen
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content) if request.method == "POST" and request.content else {}
        target = self.listen if request.method == "GET" else self.home
        if isinstance(body, dict) and body.get("method") == "tools/call":
            target = self.calls
        request.url = request.url.copy_with(port=target.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _accept(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    # The question's message comes back as the username: each call can tell that it got its own answer.
    return types.ElicitResult(action="accept", content={"username": params.message})


async def _two_calls_at_once(route: CallsTo, messages: list[str]) -> tuple[dict[str, str], list[str]]:
    """Each message's call's text, and the questions the client was asked."""
    asked: list[str] = []

    async def accept(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return await _accept(context, params)

    texts: dict[str, str] = {}
    http = httpx2.AsyncClient(transport=route, timeout=CALL_GUARD)
    transport = streamable_http_client(route.home.url, http_client=http)
    with anyio.fail_after(CALL_GUARD):
        async with Client(transport, mode="legacy", elicitation_callback=accept) as client:
            assert client.protocol_version == "2025-11-25"

            async def call(message: str) -> None:
                result = await client.call_tool("paired_ask", {"message": message})
                texts[message] = "".join(c.text for c in result.content if isinstance(c, types.TextContent))

            async with anyio.create_task_group() as tasks:
                for message in messages:
                    tasks.start_soon(call, message)
    return texts, asked


def test_two_calls_asking_at_once_on_a_restoring_replica_each_get_their_answer(pair: list[Gateway]) -> None:
    home, restoring = pair
    messages = ["first", "second"]
    texts, asked = anyio.run(_two_calls_at_once, CallsTo(home, restoring, listen=home), messages)
    assert sorted(asked) == messages
    assert texts == {message: f"answered {message}" for message in messages}
    assert "restored a session opened on another replica" in restoring.output()


def test_two_calls_asking_at_once_on_the_home_replica_while_another_holds_the_get_stream(
    pair: list[Gateway],
) -> None:
    home, other = pair
    messages = ["one", "two"]
    texts, asked = anyio.run(_two_calls_at_once, CallsTo(home, home, listen=other), messages)
    assert sorted(asked) == sorted(messages)
    assert texts == {message: f"answered {message}" for message in messages}
