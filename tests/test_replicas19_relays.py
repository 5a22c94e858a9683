"""One 2025-11-25 client session spread over two replicas (`sessions.store: redis`): what the client POSTs to one
replica reaches the replica it concerns. Real replicas on a real Redis, the conformance backend, the SDK client,
and each POST sent where the test says (by what it carries, `Routed`), so that:

- the client's answer to a backend's question (elicitation) lands on a replica other than the one that asked:
  it reaches the asking call (the ids of the gateway's questions carry the asking replica's tag);
- its `notifications/cancelled` lands on a replica other than the one running the call: the call and its
  backend call are cancelled;
- a `resources/subscribe` or `logging/setLevel` made on A after B holds a copy of the session reaches B's copy:
  B's GET stream hears the updates, B's calls log at the new level.

What a client can make the relays do is bounded too: an answer naming a tag no live replica has is dropped
(202), one too large too, and a relay list stays short; what crosses Redis names a session by its SHA-256, and a
cancellation crosses as its id and a cut reason; a relayed message that fails on delivery stops no relay; an
answer id with a Unicode digit is no 500; a relayed change given up on leaves no request state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import redis as redis_py
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from redis.asyncio import Redis

from tests.nginx_server import running_nginx
from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, Gateway, raw_session, running_gateways, write_config
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.server.lazy_stream import LazyStreamTransport
from vmcp_opt.server.session_restore import apply_change
from vmcp_opt.shared.round_relay import _KEEP, _push, read_inbox

pytestmark = [pytest.mark.slow]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
WATCHED = "test://watched-resource"
CHANNEL = "vmcp:cancels"  # `redis.key_prefix` + "cancels": relayed cancellations and session changes


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[list[Gateway]]:
    directory = tmp_path_factory.mktemp("relays19")
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "redis": {"url": redis.url, "timeout": 1.0},
        "sessions": {"store": "redis"},
        # A lost answer fails the call after this, instead of holding it for the default 300 s.
        "timeouts": {"input": 10},
    }
    with running_gateways(write_config(directory, config), 2) as replicas:
        _wait_until_both_listen(redis)
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


def _is_cancel(body: dict[str, object]) -> bool:
    return body.get("method") == "notifications/cancelled"


async def _count(client: Client, tool: str) -> int:
    result = await client.call_tool(tool, {})
    return int("".join(c.text for c in result.content if isinstance(c, types.TextContent)))


async def _cancelled_calls(client: Client) -> int:
    return await _count(client, "test_cancelled_calls")


async def _give_up_on_a_slow_call(home: Gateway, caller: Gateway, other: Gateway, seen: dict[str, object]) -> None:
    """One session (opened on `home`) whose calls run on `caller` and whose cancellation lands on `other`: the
    backend's count of cancelled calls before and once it moved (or the deadline passed), into `seen`."""
    route = Routed(lambda body: other if _is_cancel(body) else home if body.get("method") == "initialize" else caller)
    http = httpx2.AsyncClient(transport=route, timeout=60)
    async with Client(streamable_http_client(home.url, http_client=http), mode="legacy") as client:
        before = await _cancelled_calls(client)
        # Once the call runs at the backend the client gives up on it: the SDK sends `notifications/cancelled`,
        # which lands on `other`.
        giving_up = anyio.CancelScope()

        async def slow_call() -> None:
            with giving_up:
                await client.call_tool("test_slow", {"seconds": 60})

        async with anyio.create_task_group() as group:
            group.start_soon(slow_call)
            with anyio.fail_after(30):
                while await _count(client, "test_running_calls") == 0:  # noqa: ASYNC110 - the backend's count
                    await anyio.sleep(0.05)
            giving_up.cancel()
        seen["before"] = seen["after"] = before
        with anyio.move_on_after(10):  # the backend's call would run for a minute: cancelled, it counts at once
            while seen["after"] == before:
                await anyio.sleep(0.1)
                seen["after"] = await _cancelled_calls(client)
        seen["cancel landed on"] = [port for body, port in route.landed if _is_cancel(body)]


@pytest.mark.parametrize("call_on", [0, 1], ids=["call-on-home-replica", "call-on-restoring-replica"])
def test_a_cancellation_landing_on_another_replica_cancels_the_call_and_its_backend_call(
    pair: list[Gateway], call_on: int
) -> None:
    home, caller, other = pair[0], pair[call_on], pair[1 - call_on]
    seen: dict[str, object] = {}
    try:
        anyio.run(_give_up_on_a_slow_call, home, caller, other, seen)
    finally:  # the SDK client fails its exit while the call it gave up on still runs: the cause is said here
        assert seen["cancel landed on"] == [other.port]
        assert seen["after"] == seen["before"] + 1, "the backend's call was not cancelled"  # type: ignore[operator]


def _wait_until_both_listen(server: RedisServer) -> None:
    """Both replicas subscribed to the channel changes are relayed on (pub/sub keeps nothing for later)."""
    client = redis_py.Redis.from_url(server.url)
    deadline = time.monotonic() + 30
    try:
        while dict(client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode()) != 2:
            assert time.monotonic() < deadline, "the replicas do not both listen for relayed changes"
            time.sleep(0.05)
    finally:
        client.close()


async def _updates_heard_on_b(home: Gateway, a: Gateway, b: Gateway, seen: dict[str, Any]) -> None:
    updates: list[str] = []

    async def heard(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    # initialize on `home`, the subscription on A; the rest (the standalone GET stream, the calls) on B
    route = Routed(
        lambda body: (
            home if body.get("method") == "initialize" else a if body.get("method") == "resources/subscribe" else b
        )
    )
    http = httpx2.AsyncClient(transport=route, timeout=30)
    transport = streamable_http_client(home.url, http_client=http)
    async with Client(transport, mode="legacy", message_handler=heard) as client:
        await client.send_ping()  # B holds a copy now (opened or restored), before the subscription exists
        await client.subscribe_resource(WATCHED)  # on A
        with anyio.move_on_after(30):  # a hang guard: the loop ends at the first update heard
            while not updates:
                # On B: its backend (each replica runs its own) tells the sessions subscribed there.
                await client.call_tool("test_update_resource", {"uri": WATCHED})
                with anyio.move_on_after(0.5):
                    while not updates:  # noqa: ASYNC110 - the GET stream's notifications arrive in their own task
                        await anyio.sleep(0.02)
        seen["updates"] = updates
        seen["landed"] = route.landed


@pytest.mark.parametrize("opened_on", [0, 1], ids=["opened-on-A-restored-on-B", "opened-on-B-restored-on-A"])
def test_a_subscription_made_on_one_replica_is_heard_on_the_get_stream_of_another(
    pair: list[Gateway], opened_on: int
) -> None:
    a, b = pair
    seen: dict[str, Any] = {}
    anyio.run(_updates_heard_on_b, pair[opened_on], a, b, seen)
    assert [port for body, port in seen["landed"] if body.get("method") == "resources/subscribe"] == [a.port]
    assert seen["updates"][:1] == [WATCHED], f"B's GET stream heard no resources/updated; B:\n{b.output()[-3000:]}"


async def _logs_on_b_after_level_set_on_a(a: Gateway, b: Gateway, seen: dict[str, Any]) -> None:
    logs: list[str] = []

    async def logged(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.level)

    route = Routed(lambda body: b if body.get("method") == "tools/call" else a)  # calls on B, the rest on A
    http = httpx2.AsyncClient(transport=route, timeout=30)
    async with Client(
        streamable_http_client(a.url, http_client=http), mode="legacy", logging_callback=logged
    ) as client:
        await client.set_logging_level("debug")  # on A, before B holds a copy: B's restore replays it
        await client.call_tool("test_tool_with_logging", {})  # on B: its copy logs at debug
        seen["before"] = list(logs)
        await client.set_logging_level("error")  # on A
        seen["after"] = None
        with anyio.move_on_after(30):  # a hang guard, as above
            while seen["after"] != 0:
                logs.clear()
                await client.call_tool("test_tool_with_logging", {})  # on B: info logs unless B took the level
                seen["after"] = len(logs)
        seen["landed"] = route.landed


def test_a_log_level_set_on_one_replica_applies_to_the_copy_on_another(pair: list[Gateway]) -> None:
    a, b = pair
    seen: dict[str, Any] = {}
    anyio.run(_logs_on_b_after_level_set_on_a, a, b, seen)
    assert [port for body, port in seen["landed"] if body.get("method") == "logging/setLevel"] == [a.port] * 2
    assert seen["before"] == ["info"] * 3
    assert seen["after"] == 0, "the copy on the other replica still logs below the level set"


UNKNOWN_TAG = "0123456789abcdef"


def _open(gateway: Gateway) -> tuple[httpx2.Client, str]:
    """A client with a 2025-11-25 session opened on `gateway`, and its id."""
    headers = raw_session(gateway.url)
    return httpx2.Client(timeout=10, headers=headers), headers["mcp-session-id"]


def _answer(tag: str, own: str, size: int = 0) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": f"vmcp-ask-{tag}-{own}", "result": {"action": "decline", "pad": "x" * size}}


@pytest.fixture
def store(redis: RedisServer) -> Iterator[redis_py.Redis]:
    client = redis_py.Redis.from_url(redis.url)
    yield client
    client.close()


def _eventually(check: Any, what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_an_answer_naming_no_live_replica_is_dropped(pair: list[Gateway], store: redis_py.Redis) -> None:
    a, _ = pair
    http, _ = _open(a)
    with contextlib.closing(http):
        for n in range(5):
            assert http.post(a.url, json=_answer(UNKNOWN_TAG, str(n), 1000)).status_code == 202
    assert not store.exists(f"vmcp:answers:{UNKNOWN_TAG}"), "an answer was pushed for a tag no replica has"


def test_an_answer_too_large_to_relay_is_dropped(pair: list[Gateway], store: redis_py.Redis) -> None:
    a, _ = pair
    _eventually(lambda: len(store.keys("vmcp:asker:*")) == 2, "the replicas' tags are not both live")
    tags = {key.decode().rsplit(":", 1)[1] for key in store.keys("vmcp:asker:*")}
    http, _ = _open(a)
    with contextlib.closing(http):
        for tag in tags:  # one of them is A's own: answered by its SDK path; the other relayed, or not
            http.post(a.url, json=_answer(tag, "huge", 1_200_000))
    _eventually(lambda: "bytes for another replica was dropped" in a.output(), "the large answer was not dropped")


def test_a_relay_list_keeps_its_last_items(redis: RedisServer) -> None:
    async def main() -> int:
        client = Redis.from_url(redis.url)
        try:
            for n in range(_KEEP + 50):
                await _push(client, "vmcp:test-trim", str(n))
            return int(await client.llen("vmcp:test-trim"))
        finally:
            await client.delete("vmcp:test-trim")
            await client.aclose()

    assert anyio.run(main) == _KEEP


def test_a_delivery_that_fails_stops_no_relay(redis: RedisServer) -> None:
    handled: list[bytes] = []

    async def handle(raw: bytes) -> None:
        if raw == b"bad":
            raise anyio.ClosedResourceError  # a session's stream closed as the message reached it
        handled.append(raw)

    async def main() -> None:
        client = Redis.from_url(redis.url)
        try:
            async with anyio.create_task_group() as tasks:
                log = ThrottledLog(logging.getLogger("test"), 60.0)
                tasks.start_soon(read_inbox, client, "vmcp:test-inbox", 0.2, log, "test items", handle)
                await client.rpush("vmcp:test-inbox", "bad", "good")
                with anyio.fail_after(30):
                    while not handled:  # noqa: ASYNC110 - the inbox reader's own task
                        await anyio.sleep(0.02)
                await client.rpush("vmcp:test-inbox", "after")
                with anyio.fail_after(30):
                    while len(handled) < 2:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                tasks.cancel_scope.cancel()
        finally:
            await client.aclose()

    anyio.run(main)
    assert handled == [b"good", b"after"]


def test_what_is_published_names_the_session_by_digest_and_cuts_a_cancellation(
    pair: list[Gateway],
    store: redis_py.Redis,
) -> None:
    a, b = pair
    http, session = _open(a)
    pubsub = store.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    try:
        with contextlib.closing(http):
            assert http.post(b.url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}).status_code == 200  # B's copy
            level = {"jsonrpc": "2.0", "id": 3, "method": "logging/setLevel", "params": {"level": "debug"}}
            assert http.post(a.url, json=level).status_code == 200
            params = {"requestId": "not-running", "reason": "r" * 100_000}
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}
            assert http.post(a.url, json=cancel).status_code == 202
        heard: list[bytes] = []
        deadline = time.monotonic() + 30  # a hang guard: the loop ends at the second message
        while len(heard) < 2 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                heard.append(message["data"])
    finally:
        pubsub.close()
    assert len(heard) == 2, heard
    digest = hashlib.sha256(session.encode()).hexdigest()
    for data in heard:
        assert session.encode() not in data
        assert json.loads(data)["session"] == digest
    relayed_cancel = json.loads(heard[1])["cancel"]
    assert relayed_cancel == {"requestId": "not-running", "reason": "r" * 200}


def test_an_answer_id_with_a_unicode_digit_is_no_server_error(pair: list[Gateway]) -> None:
    a, _ = pair
    http, _ = _open(a)
    with contextlib.closing(http):
        answered = http.post(a.url, json=_answer(UNKNOWN_TAG, "\u00b2"))
    assert answered.status_code == 202, answered.text
    assert "ValueError" not in a.output()


def test_a_change_given_up_on_leaves_no_request_state() -> None:
    """No server loop reads the copy's messages: the change waits, is given up on, and its stream goes."""

    async def main() -> dict[str, Any]:
        transport = LazyStreamTransport(mcp_session_id="s1", is_json_response_enabled=False)
        scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": [(b"host", b"localhost")]}
        async with transport.connect():
            with anyio.move_on_after(0.3):
                await apply_change(transport, scope, "s1", "2025-11-25", ("logging/setLevel", {"level": "debug"}))
            left = dict(transport._request_streams)
            await transport.terminate()
        return left

    assert anyio.run(main) == {}
