"""A 2025-11-25 client's answer to a backend's question reaches the replica that asked (`sessions.store: redis`).

While a call runs on one replica, the backend asks the client (here elicitation) on the call's SSE stream; the
client POSTs its answer as a new request, which a load balancer without affinity may send to another replica.
Real replicas on a real Redis, the conformance backend, the SDK client declaring elicitation, and each POST
sent where the test says (by what it carries), so every answer lands on a replica other than the asker.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client

from tests.nginx_server import running_nginx
from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, Gateway, running_gateways, write_config

pytestmark = [pytest.mark.slow]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[list[Gateway]]:
    directory = tmp_path_factory.mktemp("elicit19")
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "redis": {"url": redis.url, "timeout": 1.0},
        "sessions": {"store": "redis"},
        # A lost answer fails the call after this, instead of holding it for the default 300 s.
        "timeouts": {"input": 10},
    }
    with running_gateways(write_config(directory, config), 2) as replicas:
        yield replicas


def _json(request: httpx2.Request) -> dict[str, object]:
    if request.method != "POST" or not request.content:
        return {}
    body = json.loads(request.content)
    return body if isinstance(body, dict) else {}


def is_answer(body: dict[str, object]) -> bool:
    """The client's answer to a server→client request: a JSON-RPC response."""
    return "id" in body and "method" not in body


class Routed(httpx2.AsyncBaseTransport):
    """Sends each request to the replica `pick` names for its JSON body (`{}` for GET and DELETE)."""

    def __init__(self, pick: Callable[[dict[str, object]], Gateway]) -> None:
        self.pick = pick
        self.inner = httpx2.AsyncHTTPTransport()
        self.landed: list[tuple[dict[str, object], int]] = []  # (body, port) of each POST

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = _json(request)
        port = self.pick(body).port
        request.url = request.url.copy_with(port=port)
        if body:
            self.landed.append((body, port))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _accept(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    # The question's message comes back as the username: each call can tell that it got its own answer.
    return types.ElicitResult(action="accept", content={"username": params.message, "email": "e@example.com"})


def _text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _expected(message: str) -> str:
    return f'User response: action=accept, content={{"username": "{message}", "email": "e@example.com"}}'


async def _elicit(
    url: str, route: httpx2.AsyncBaseTransport | None, messages: list[str], *, at_once: bool = True
) -> list[str]:
    """One session calling `test_elicitation` once per message, all at once or one after another; each call's
    text."""
    texts: dict[str, str] = {}
    http = httpx2.AsyncClient(transport=route, timeout=60)
    transport = streamable_http_client(url, http_client=http)
    with anyio.fail_after(60):  # a guard against hanging, not a measure
        async with Client(transport, mode="legacy", elicitation_callback=_accept) as client:
            assert client.protocol_version == "2025-11-25"

            async def call(message: str) -> None:
                texts[message] = _text(await client.call_tool("test_elicitation", {"message": message}))

            if not at_once:
                for message in messages:
                    await call(message)
            async with anyio.create_task_group() as tasks:
                for message in messages if at_once else []:
                    tasks.start_soon(call, message)
    return [texts[m] for m in messages]


@pytest.mark.parametrize("call_on", [0, 1], ids=["call-on-home-replica", "call-on-restoring-replica"])
def test_an_answer_landing_on_another_replica_reaches_the_asking_call(pair: list[Gateway], call_on: int) -> None:
    home, caller, other = pair[0], pair[call_on], pair[1 - call_on]
    # The session opens on `home`; the call runs on `caller`; the client's answer lands on the other one.
    route = Routed(lambda body: other if is_answer(body) else caller if body.get("method") == "tools/call" else home)
    [text] = anyio.run(_elicit, home.url, route, ["name?"])
    assert text == _expected("name?")
    [(_, answered_on)] = [(body, port) for body, port in route.landed if is_answer(body)]
    [(_, called_on)] = [(body, port) for body, port in route.landed if body.get("method") == "tools/call"]
    assert answered_on != called_on


def test_questions_of_one_session_asked_on_two_replicas_at_once_each_get_their_own_answer(
    pair: list[Gateway],
) -> None:
    """Each replica's copy of the session numbers its questions to the client from 1: both first questions
    would carry one id. Each answer lands on the replica that did not ask it."""
    first, second = pair
    asker = {"on-first": first, "on-second": second}

    def pick(body: dict[str, object]) -> Gateway:
        params = body.get("params")
        if body.get("method") == "tools/call" and isinstance(params, dict):
            return asker[params["arguments"]["message"]]
        result = body.get("result")
        if is_answer(body) and isinstance(result, dict):
            return second if asker[result["content"]["username"]] is first else first
        return first

    route = Routed(pick)
    texts = anyio.run(_elicit, first.url, route, list(asker))
    assert texts == [_expected(message) for message in asker]


def test_elicitations_through_a_round_robin_balancer_are_answered(tmp_path: Path, pair: list[Gateway]) -> None:
    """The suspected case as a client behind nginx (round-robin, no affinity) meets it: calls in turn."""
    messages = ["one", "two", "three", "four"]
    with running_nginx(tmp_path / "nginx", [g.port for g in pair]) as nginx:
        texts = anyio.run(lambda: _elicit(nginx.url, None, messages, at_once=False))
    assert texts == [_expected(m) for m in messages]
