"""What a session's record in Redis keeps of its resource subscriptions is bounded in bytes
(`sessions.store: redis`): a URI longer than `MAX_SHARED_URI_BYTES`, or one past `MAX_SHARED_SUBSCRIPTION_BYTES`
of URIs in all, is served by the replica holding the session but not recorded, with one warning. Before, one
session's record held up to 256 URIs of ~64 KB each in the Redis every client's sessions share.

Real `redis-server`, a real `vmcp serve` with the conformance backend (it takes subscriptions to its template
`test://template/{id}/data`), raw HTTP `resources/subscribe` requests: no SDK client sends URIs this long.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx2
import pytest
import redis

from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, Gateway, raw_session, running_gateway, write_config
from vmcp_opt.shared.session_store import MAX_SHARED_SUBSCRIPTION_BYTES, MAX_SHARED_URI_BYTES, session_key_digest

pytestmark = [pytest.mark.slow]

WARNING = "resource subscriptions past what its record keeps"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Gateway]]:
    conformance = [sys.executable, str(EXAMPLES / "backends" / "conformance_server.py")]
    with running_redis() as server:
        config = {
            "backends": [{"name": "conformance", "command": conformance[0], "args": conformance[1:]}],
            "redis": {"url": server.url, "timeout": 2.0},
            "sessions": {"store": "redis"},
        }
        with running_gateway(write_config(tmp_path_factory.mktemp("bounds"), config)) as gateway:
            yield server, gateway


def uri(name: str, size: int) -> str:
    """A URI of the conformance backend's template, `size` bytes long."""
    head, tail = "test://template/", "/data"
    return head + name + "x" * (size - len(head) - len(name) - len(tail)) + tail


def subscribe(gateway: Gateway, headers: dict[str, str], uris: list[str]) -> None:
    for number, address in enumerate(uris, start=10):
        request = {"jsonrpc": "2.0", "id": number, "method": "resources/subscribe", "params": {"uri": address}}
        answer = httpx2.post(gateway.url, json=request, headers=headers, timeout=30)
        # Served whatever its length: the replica holding the session subscribed at the backend.
        assert answer.status_code == 200 and answer.json().get("result") == {}, answer.text[:500]


def recorded(server: RedisServer, headers: dict[str, str]) -> tuple[list[str], int]:
    """The subscriptions the record of the session `headers` name holds, and the record's bytes in Redis."""
    admin = redis.Redis(port=server.port)
    key = "vmcp:session:" + session_key_digest(headers["mcp-session-id"])
    names = [name.decode() for name in admin.hkeys(key) if name.startswith(b"sub:")]
    usage = admin.memory_usage(key, samples=0)
    assert usage is not None
    return [name.removeprefix("sub:") for name in names], int(usage)


def test_long_subscription_uris_are_served_but_a_record_keeps_a_bounded_number_of_bytes(
    served: tuple[RedisServer, Gateway],
) -> None:
    server, gateway = served
    headers = raw_session(gateway.url)
    short = [uri(f"s{n}-", 100) for n in range(3)]
    huge = [uri(f"h{n}-", 60_000) for n in range(20)]  # 1.2 MB: within a body, past any record's bound
    subscribe(gateway, headers, [*short, *huge])
    kept, usage = recorded(server, headers)
    assert sorted(kept) == sorted(short)
    # The record: initialize params, a few fields, the short URIs; not the 1.2 MB.
    assert usage < 16 * 1024, usage
    assert gateway.output().count(WARNING) == 1  # one warning for 20 refused URIs, not one per request


def test_a_record_keeps_subscriptions_up_to_its_total_of_uri_bytes(served: tuple[RedisServer, Gateway]) -> None:
    server, gateway = served
    headers = raw_session(gateway.url)
    size = MAX_SHARED_URI_BYTES  # each within the per-URI bound
    many = [uri(f"m{n:03}-", size) for n in range(MAX_SHARED_SUBSCRIPTION_BYTES // size + 8)]
    subscribe(gateway, headers, many)
    kept, usage = recorded(server, headers)
    assert len(kept) == MAX_SHARED_SUBSCRIPTION_BYTES // size
    assert sum(len(k) for k in kept) <= MAX_SHARED_SUBSCRIPTION_BYTES
    assert usage < 2 * MAX_SHARED_SUBSCRIPTION_BYTES, usage  # the allocator's size classes on top of the URIs
    # An unsubscribe frees room in the record for the next subscription.
    request = {"jsonrpc": "2.0", "id": 1, "method": "resources/unsubscribe", "params": {"uri": kept[0]}}
    assert httpx2.post(gateway.url, json=request, headers=headers, timeout=30).json().get("result") == {}
    later = uri("later-", 200)
    subscribe(gateway, headers, [later])
    kept_after, _ = recorded(server, headers)
    assert later in kept_after and kept[0] not in kept_after
