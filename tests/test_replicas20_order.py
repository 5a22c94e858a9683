"""One 2025-11-25 session's copies on two replicas (`sessions.store: redis`) stay in step, whatever the order things
happen in. Real replicas on a real Redis, the conformance backend; replica B reaches Redis through `HoldingProxy`, a
TCP relay in this process that can hold back what Redis sends one of B's connections, so that a race between the
replicas happens the same way every run:

- a subscription taken on A and dropped on B while B has not yet heard A's change: every copy, and the record,
  ends without it (changes carry the record's revision; a copy makes them in that order);
- a change made while B restores the session (after B read the record, before its copy could hear changes)
  reaches B's copy;
- a client's late answer to a question an ended copy of its session asked is not taken by a new copy's question
  of the same number;
- a client's own request ids that look like the gateway's internal ones are recorded and relayed as any.

Each copy's state is read from the backend it runs on: `test_update_resource` says how many of that replica's
backend sessions are subscribed to a URI (each test its own URIs, so only this session counts).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx2
import pytest
import redis as redis_py
from mcp_types import InitializeRequestParams
from redis.asyncio import Redis

from tests.redis_server import RedisServer, running_redis
from tests.support import RAW_HEADERS, RAW_INITIALIZE, Gateway, running_gateway, sse_messages, write_config
from tests.test_replicas19_relays import CONFORMANCE_SERVER, _wait_until_both_listen
from vmcp_opt.shared.session_store import RedisSessions, SessionRecord

pytestmark = [pytest.mark.slow]

_ids = itertools.count(100)


class _Connection:
    def __init__(self) -> None:
        self.last = b""  # the last bytes the replica sent on it
        self.listens = False  # it subscribed to the channel changes are relayed on


class HoldingProxy:
    """A TCP relay to redis-server whose data for a connection `hold` matches waits until `release`."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.match: Callable[[_Connection], bool] | None = None
        self.holding = threading.Event()  # something is held back now
        self.released = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self, match: Callable[[_Connection], bool]) -> None:
        self.released.clear()
        self.holding.clear()
        self.match = match

    def release(self) -> None:
        self.match = None
        self.released.set()

    def close(self) -> None:
        self.release()
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, server]
            connection = _Connection()
            threading.Thread(target=self._pump, args=(client, server, connection, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, connection, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, connection: _Connection, outgoing: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if outgoing:
                    connection.last = data
                    connection.listens |= b"SUBSCRIBE" in data and b"vmcp:cancels" in data
                else:
                    match = self.match
                    if match is not None and match(connection):
                        self.holding.set()
                        self.released.wait(30)
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _config(redis_url: str) -> dict[str, Any]:
    return {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "redis": {"url": redis_url, "timeout": 1.0},
        "sessions": {"store": "redis"},
        "timeouts": {"input": 20},
    }


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(redis: RedisServer) -> Iterator[HoldingProxy]:
    relay = HoldingProxy(redis.port)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer, proxy: HoldingProxy) -> Iterator[list[Gateway]]:
    """A on Redis itself, B through the proxy."""
    a_dir, b_dir = tmp_path_factory.mktemp("order20a"), tmp_path_factory.mktemp("order20b")
    with (
        running_gateway(write_config(a_dir, _config(redis.url))) as a,
        running_gateway(write_config(b_dir, _config(f"redis://127.0.0.1:{proxy.port}/0"))) as b,
    ):
        _wait_until_both_listen(redis)
        yield [a, b]


@pytest.fixture
def store(redis: RedisServer) -> Iterator[redis_py.Redis]:
    client = redis_py.Redis.from_url(redis.url)
    yield client
    client.close()


def _open(gateway: Gateway) -> dict[str, str]:
    """A session opened on `gateway` by a client that can answer elicitations: its requests' headers."""
    params = {**RAW_INITIALIZE["params"], "capabilities": {"elicitation": {}}}  # type: ignore[dict-item]
    opened = httpx2.post(gateway.url, json={**RAW_INITIALIZE, "params": params}, headers=RAW_HEADERS, timeout=30)
    assert opened.status_code == 200, opened.text
    headers = {**RAW_HEADERS, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert httpx2.post(gateway.url, json=initialized, headers=headers, timeout=10).status_code == 202
    return headers


def _request(gateway: Gateway, headers: dict[str, str], method: str, params: dict[str, Any], **extra: Any) -> Any:
    """The result of a request on the session (its id `extra["id"]` or a fresh one); fails on an error."""
    body = {"jsonrpc": "2.0", "id": extra.get("id", next(_ids)), "method": method, "params": params}
    answer = httpx2.post(gateway.url, json=body, headers=headers, timeout=extra.get("timeout", 30))
    assert answer.status_code == 200, answer.text
    if answer.headers["content-type"].startswith("text/event-stream"):
        [message] = [m for _, m in sse_messages(iter(answer.text.splitlines())) if m and m.get("id") == body["id"]]
    else:
        message = answer.json()
    assert "result" in message, message
    return message["result"]


def _subscribers(gateway: Gateway, headers: dict[str, str], uri: str) -> int:
    """How many of `gateway`'s backend sessions are subscribed to `uri`."""
    result = _request(gateway, headers, "tools/call", {"name": "test_update_resource", "arguments": {"uri": uri}})
    text = result["content"][0]["text"]  # "notified N subscriber(s) of <uri>"
    return int(text.split()[1])


def _eventually(check: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _uri() -> str:
    return f"test://template/{uuid.uuid4().hex}/data"


def _digest(headers: dict[str, str]) -> bytes:
    return hashlib.sha256(headers["mcp-session-id"].encode()).hexdigest().encode()


def _record(redis: RedisServer, headers: dict[str, str]) -> Any:
    async def load() -> Any:
        client = Redis.from_url(redis.url)
        try:
            return await RedisSessions(client, "vmcp:", ttl=600).load(headers["mcp-session-id"])
        finally:
            await client.aclose()

    return anyio.run(load)


def test_each_change_to_a_record_takes_the_next_revision_atomically(redis: RedisServer) -> None:
    session = uuid.uuid4().hex
    other = uuid.uuid4().hex

    async def main() -> dict[str, Any]:
        client = Redis.from_url(redis.url)
        sessions = RedisSessions(client, "t20:", ttl=60)
        seen: dict[str, Any] = {}
        try:
            params = json.loads(json.dumps(RAW_INITIALIZE["params"]))
            record = SessionRecord(InitializeRequestParams.model_validate(params, by_name=False), "2025-11-25", "ns")
            await sessions.save(session, record)
            seen["saved"] = await sessions.revision(session)
            seen["steps"] = [
                await sessions.set_level(session, "debug"),
                await sessions.subscription(session, "test://a", subscribed=True),
                await sessions.subscription(session, "test://a", subscribed=False),
            ]
            async with anyio.create_task_group() as tasks:  # twenty replicas changing it at once

                async def change(n: int) -> None:
                    seen.setdefault("at_once", []).append(await sessions.set_level(session, str(n)))

                for n in range(20):
                    tasks.start_soon(change, n)
            loaded = await sessions.load(session)
            seen["loaded"] = loaded.revision if loaded else None
            # A record written before revisions were kept has none: it loads at 0 and counts on from there.
            await client.hdel(sessions.prefix + hashlib.sha256(session.encode()).hexdigest(), "revision")
            loaded = await sessions.load(session)
            seen["legacy"] = loaded.revision if loaded else None
            seen["legacy_next"] = await sessions.set_level(session, "info")
            seen["no_record"] = await sessions.set_level(other, "info"), await sessions.revision(other)
        finally:
            await client.aclose()
        return seen

    seen = anyio.run(main)
    assert seen["saved"] == 0
    assert seen["steps"] == [1, 2, 3]
    assert sorted(seen["at_once"]) == list(range(4, 24))
    assert seen["loaded"] == 23
    assert (seen["legacy"], seen["legacy_next"]) == (0, 1)
    assert seen["no_record"] == (None, None)


def test_a_subscription_taken_on_one_replica_and_dropped_on_another_before_it_heard_ends_dropped_everywhere(
    pair: list[Gateway], proxy: HoldingProxy, redis: RedisServer
) -> None:
    a, b = pair
    watched, barrier = _uri(), _uri()
    headers = _open(a)
    _request(b, headers, "ping", {})  # B holds a copy
    proxy.hold(lambda connection: connection.listens)  # B hears no change until released
    try:
        _request(a, headers, "resources/subscribe", {"uri": watched})
        _request(b, headers, "resources/unsubscribe", {"uri": watched})  # after A's subscribe, before B heard it
        _request(a, headers, "resources/subscribe", {"uri": barrier})  # heard by B after A's first change
    finally:
        proxy.release()
    # B makes a session's relayed changes one at a time, in the order heard: the barrier there means A's first
    # change has been dealt with.
    _eventually(lambda: _subscribers(b, headers, barrier) == 1, "B never took the later subscription")
    _eventually(lambda: _subscribers(a, headers, watched) == 0, "A's copy kept the subscription dropped on B")
    assert _subscribers(b, headers, watched) == 0, "B's copy took A's older subscription after dropping it"
    record = _record(redis, headers)
    assert record is not None and record.subscriptions == (barrier,)


def test_a_change_made_while_a_replica_restores_the_session_reaches_its_copy(
    pair: list[Gateway], proxy: HoldingProxy, redis: RedisServer
) -> None:
    a, b = pair
    watched = _uri()
    headers = _open(a)
    digest = _digest(headers)
    proxy.hold(lambda connection: b"HGETALL" in connection.last and digest in connection.last)  # B's read of it
    answered: list[Any] = []
    restoring = threading.Thread(target=lambda: answered.append(_request(b, headers, "ping", {})))
    restoring.start()
    try:
        assert proxy.holding.wait(10), "B did not read the session's record"

        async def change_unheard() -> int | None:
            # What A does on a subscribe, but its publication is lost to B: B was restoring, holding no copy yet.
            client = Redis.from_url(redis.url)
            try:
                return await RedisSessions(client, "vmcp:", ttl=600).subscription(
                    headers["mcp-session-id"], watched, subscribed=True
                )
            finally:
                await client.aclose()

        assert anyio.run(change_unheard) == 1
    finally:
        proxy.release()
        restoring.join(30)
    assert answered == [{}]
    _eventually(lambda: _subscribers(b, headers, watched) == 1, "B's copy missed the change made while it restored")


def _ask(
    http: httpx2.Client, gateway: Gateway, headers: dict[str, str], message: str
) -> tuple[Iterator[tuple[str | None, dict[str, Any] | None]], str, contextlib.ExitStack]:
    """A `test_elicitation` call on `gateway`: its open stream's messages, the id of the question it asks the
    client, and what closes the stream."""
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": "tools/call"}
    body["params"] = {"name": "test_elicitation", "arguments": {"message": message}}
    stack = contextlib.ExitStack()
    answer = stack.enter_context(http.stream("POST", gateway.url, json=body, headers=headers))
    messages = sse_messages(answer.iter_lines())
    question = next(m for _, m in messages if m and m.get("method") == "elicitation/create")
    return messages, str(question["id"]), stack


def _answer(question: str, username: str) -> dict[str, Any]:
    content = {"username": username, "email": "e@example.com"}
    return {"jsonrpc": "2.0", "id": question, "result": {"action": "accept", "content": content}}


@pytest.mark.parametrize("lands_on", [1, 0], ids=["on-the-asking-replica", "on-the-other-replica"])
def test_a_late_answer_to_an_ended_copys_question_is_not_taken_by_a_new_copy(
    pair: list[Gateway], store: redis_py.Redis, lands_on: int
) -> None:
    a, b = pair
    headers = _open(a)
    with httpx2.Client(timeout=30) as http:
        _, old_question, old_stream = _ask(http, b, headers, "first")  # B's first copy asks; no answer yet
        old_stream.close()
        # B's copy ends as when the session is deleted elsewhere; the tombstone then goes again, so that the
        # session, its record intact, is restored anew: a copy that numbers its questions from 1 again.
        ended = f"vmcp:session-ended:{_digest(headers).decode()}"
        store.set(ended, "1")
        ping = {"jsonrpc": "2.0", "id": next(_ids), "method": "ping"}
        assert http.post(b.url, json=ping, headers=headers).status_code == 404
        store.delete(ended)
        messages, new_question, new_stream = _ask(http, b, headers, "second")
        with new_stream:
            for question, username in [(old_question, "late"), (new_question, "fresh")]:
                posted = http.post(pair[lands_on].url, json=_answer(question, username), headers=headers)
                assert posted.status_code == 202, posted.text
            [result] = [m["result"] for _, m in messages if m and "result" in m]
    text = result["content"][0]["text"]
    assert '"username": "fresh"' in text, text


def test_client_request_ids_like_the_gateways_own_are_recorded_and_relayed(
    pair: list[Gateway], redis: RedisServer
) -> None:
    a, b = pair
    on_a, on_b = _uri(), _uri()
    headers = _open(a)
    _request(b, headers, "ping", {})  # B holds a restored copy
    # A restore's own requests are answered to nobody: a client's under such an id must still be answered.
    _request(b, headers, "resources/subscribe", {"uri": on_b}, id="vmcp-restore-0", timeout=10)
    _request(a, headers, "resources/subscribe", {"uri": on_a}, id="vmcp-change-1")
    record = _record(redis, headers)
    assert record is not None and set(record.subscriptions) == {on_a, on_b}
    _eventually(lambda: _subscribers(a, headers, on_b) == 1, "A's copy did not follow B's subscription")
    _eventually(lambda: _subscribers(b, headers, on_a) == 1, "B's copy did not follow A's subscription")


@pytest.fixture(autouse=True)
def _nothing_held(proxy: HoldingProxy) -> Iterator[None]:
    yield
    proxy.release()


def test_an_answer_relayed_by_a_replica_of_the_previous_version_reaches_the_copy_that_asked() -> None:
    # The previous code read `<copy>-<n>` of this code's ask id as the dispatcher's id and relayed no `copy`.
    from vmcp_opt.shared.round_relay import _deliver

    got: list[tuple[str, str, object]] = []

    async def deliver(session: str, copy: str, answer: Any) -> None:
        got.append((session, copy, answer.id))

    async def relay_all() -> None:
        for relayed in (
            {"session": "s", "answer": {"jsonrpc": "2.0", "id": "3-7", "result": {}}},
            {"session": "s", "copy": "4", "answer": {"jsonrpc": "2.0", "id": 9, "result": {}}},
        ):
            await _deliver(deliver, json.dumps(relayed).encode())

    anyio.run(relay_all)
    assert got == [("s", "3", 7), ("s", "4", 9)]


def test_a_copy_keeps_a_bounded_memory_of_the_things_changed() -> None:
    # A client subscribing to ever new URIs and dropping them: each change names a new thing.
    from mcp_types import Implementation, InitializeRequestParams

    from vmcp_opt.server.session_relays import MAX_SEEN, Held
    from vmcp_opt.shared.round_relay import SessionChange
    from vmcp_opt.shared.session_store import SessionRecord

    params = InitializeRequestParams(
        protocol_version="2025-11-25", capabilities={}, client_info=Implementation(name="c", version="1")
    )
    held = Held(SessionRecord(params, "2025-11-25", "events"))
    for revision in range(1, 4 * MAX_SEEN + 1):
        method = "resources/subscribe" if revision % 2 else "resources/unsubscribe"
        held.took(SessionChange(method, {"uri": f"notes://note/{revision // 2}"}, revision))
    assert len(held.seen) == MAX_SEEN
    # What was forgotten is still had: an old change of it is not made again.
    assert held.has(SessionChange("resources/subscribe", {"uri": "notes://note/0"}, 1))
    assert not held.has(SessionChange("resources/subscribe", {"uri": "notes://note/0"}, 4 * MAX_SEEN + 1))
