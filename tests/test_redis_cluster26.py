"""The Redis event store (shared/events.py) and its scripts (shared/event_scripts.py) on a real Redis Cluster:
three masters on loopback, the client redis-py's `RedisCluster`. A script whose keys hash to different slots is
refused by a cluster (CROSSSLOT), so before the store's keys shared a hash tag no event was ever stored there."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from mcp.server.streamable_http import GET_STREAM_KEY, EventMessage
from mcp_types import JSONRPCNotification, JSONRPCResponse
from redis.asyncio.cluster import RedisCluster

from tests.support import free_port, unavailable
from vmcp_opt.shared.event_scripts import STREAM_OVERHEAD_BYTES
from vmcp_opt.shared.events import EVENTS, EVENTS_CALLER, RedisEventStore, ReplicaPresence

MASTERS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    with running_cluster(tmp_path_factory.mktemp("cluster")) as ports:
        yield ports


@contextlib.contextmanager
def running_cluster(where: Path) -> Iterator[list[int]]:
    """The masters' ports, once the cluster says `cluster_state:ok` on each."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        unavailable("redis-server and redis-cli are not installed (scripts/setup.sh dev installs them as root)")
    ports = [free_port() for _ in range(MASTERS)]
    with contextlib.ExitStack() as stack:
        for port in ports:
            stack.enter_context(_cluster_node(where, port))
        _wait_for_nodes(ports)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait_for_cluster(ports)
        yield ports


@contextlib.contextmanager
def _cluster_node(where: Path, port: int) -> Iterator[None]:
    # The bus port given, not the default port + 10000 (past 65535 for a high free port).
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
    command += ["--cluster-port", str(free_port()), "--cluster-config-file", str(where / f"nodes-{port}.conf")]
    command += ["--dir", str(where), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def _wait_for_nodes(ports: list[int]) -> None:
    deadline = time.monotonic() + 20
    for port in ports:
        node = redis.Redis(port=port, socket_timeout=1)
        while True:
            try:
                node.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                node.close()


def _wait_for_cluster(ports: list[int]) -> None:
    deadline = time.monotonic() + 30
    for port in ports:
        node = redis.Redis(port=port, socket_timeout=1)
        try:
            while _cluster_state(node) != "ok":
                assert time.monotonic() < deadline, f"the cluster did not come up on {port}"
                time.sleep(0.05)
        finally:
            node.close()


def _cluster_state(node: redis.Redis) -> str:
    info: dict[str, Any] = node.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]  # untyped in redis-py
    return str(info.get("cluster_state"))


@pytest.fixture
async def client(cluster: list[int]) -> AsyncIterator[RedisCluster]:
    connection = RedisCluster(host="127.0.0.1", port=cluster[0])
    await connection.flushall(target_nodes=RedisCluster.PRIMARIES)
    await connection.execute_command(
        "SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES
    )  # each test loads the scripts it runs
    yield connection
    await connection.aclose()


def event_store(client: RedisCluster, ttl: float = 60, **bounds: int) -> RedisEventStore:
    presence = ReplicaPresence(client, "t:", "replica-a")
    return RedisEventStore(client, "t:", presence, max_events=10, ttl=ttl, poll_interval=0.01, **bounds)


def notification(n: int, padding: str = "") -> JSONRPCNotification:
    data = {"n": n, "padding": padding}
    return JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"level": "info", "data": data})


async def stored(
    store: RedisEventStore, namespace: str, messages: list[Any], caller: str = "alice", stream: str = GET_STREAM_KEY
) -> list[str]:
    """The event ids of `messages`, stored on `stream` of session `namespace` for `caller`, written out."""
    session, charged = EVENTS.set(namespace), EVENTS_CALLER.set(caller)
    try:
        ids = [await store.store_event(stream, message) for message in messages]
    finally:
        EVENTS.reset(session)
        EVENTS_CALLER.reset(charged)
    await store.write([])
    return ids


async def replayed(store: RedisEventStore, namespace: str, event_id: str) -> list[Any] | None:
    """The messages a client resuming from `event_id` gets; None when the store does not hold it."""
    got: list[Any] = []

    async def collect(message: EventMessage) -> None:
        got.append(message.message)

    token = EVENTS.set(namespace)
    try:
        if not await store.holds(event_id):
            return None
        await store.replay_events_after(event_id, collect)
    finally:
        EVENTS.reset(token)
    return got


async def _expired(client: RedisCluster, key: str) -> None:
    """Once Redis has expired `key` (polled: Redis says nothing when it does)."""
    deadline = time.monotonic() + 30
    while await client.exists(key):
        assert time.monotonic() < deadline, f"{key} did not expire"
        await anyio.sleep(0.05)


async def counted_bytes(client: RedisCluster) -> int:
    return int(await client.get("t:{events}-budget:total") or 0)


@pytest.mark.anyio
async def test_events_of_many_sessions_are_stored_and_replayed_on_a_cluster(client: RedisCluster) -> None:
    store = event_store(client)
    sessions = [f"ns{n}" for n in range(8)]  # namespaces whose untagged keys hash to slots of every master
    ids = {ns: await stored(store, ns, [None, notification(1), notification(2)]) for ns in sessions}
    assert store.lost == 0
    for ns in sessions:
        assert await replayed(store, ns, ids[ns][0]) == [notification(1), notification(2)]
        assert await replayed(store, ns, ids[ns][2]) == []
    assert await replayed(store, "ns0", ids["ns1"][0]) is None  # another session's id replays nothing


@pytest.mark.anyio
async def test_a_resumed_request_stream_ends_with_the_answer_stored_on_the_cluster(client: RedisCluster) -> None:
    store = event_store(client)
    answer = JSONRPCResponse(jsonrpc="2.0", id=1, result={"ok": True})
    ids = await stored(store, "ns1", [None, notification(1), answer], stream="1")
    assert await replayed(store, "ns1", ids[0]) == [notification(1), answer]


@pytest.mark.anyio
async def test_a_callers_bound_drops_its_other_sessions_oldest_on_a_cluster(client: RedisCluster) -> None:
    """The script reaches keys named by what it reads (the caller's older session's list and stream)."""
    # Room for one stream's own memory (charged while it exists) beside its events.
    store = event_store(client, caller_bytes=3000 + 2 * STREAM_OVERHEAD_BYTES)
    old = await stored(store, "older", [notification(n, "x" * 1000) for n in range(2)], caller="bob")
    newer = await stored(store, "newer", [notification(n, "y" * 1000) for n in range(2)], caller="bob")
    assert store.dropped >= 1 and store.lost == 0
    assert await replayed(store, "older", old[0]) is None  # the caller's oldest went first
    assert await replayed(store, "newer", newer[0]) == [notification(1, "y" * 1000)]
    assert await counted_bytes(client) <= 3000 + 2 * STREAM_OVERHEAD_BYTES


@pytest.mark.anyio
async def test_expired_sessions_are_released_from_the_counts_on_a_cluster(client: RedisCluster) -> None:
    """The writer's clock, given in ARGV, finds the sessions whose keys Redis has expired."""
    brief, lasting = event_store(client, ttl=0.2), event_store(client)
    await stored(brief, "gone", [notification(n, "z" * 500) for n in range(3)])
    await stored(lasting, "kept", [notification(0)])  # the counts' own keys now last
    await _expired(client, "t:{events}:gone:held")
    assert b"gone" in await client.hgetall("t:{events}-budget:sizes")  # still counted: nothing released it yet
    await stored(lasting, "kept", [notification(1)])
    charged = await client.hgetall("t:{events}-budget:sizes")
    assert set(charged) == {b"kept"}
    assert await counted_bytes(client) == int(charged[b"kept"])


@pytest.mark.anyio
async def test_a_forgotten_session_leaves_nothing_on_a_cluster(client: RedisCluster) -> None:
    store = event_store(client)
    await stored(store, "ns1", [None, notification(1)])
    keep = await stored(store, "ns2", [None, notification(2)])
    await store.forget("ns1")
    assert [key async for key in client.scan_iter(match="t:{events}:ns1*")] == []
    assert await replayed(store, "ns2", keep[0]) == [notification(2)]
    assert await counted_bytes(client) == int(await client.hget("t:{events}-budget:sizes", "ns2") or 0)


@pytest.mark.anyio
async def test_events_are_stored_after_the_cluster_lost_its_scripts(client: RedisCluster) -> None:
    """A cluster's pipeline does not load a script a node lacks (restarted, failed over): the store does."""
    store = event_store(client)
    first = await stored(store, "ns1", [None, notification(1)])
    await client.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)
    await stored(store, "ns1", [notification(2)])
    assert store.lost == 0
    assert await replayed(store, "ns1", first[0]) == [notification(1), notification(2)]
