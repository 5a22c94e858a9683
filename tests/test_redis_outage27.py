"""Replicas through a Redis outage: a restart with `redis.share_changes`, a DELETE while Redis is down, and a
Redis that takes connections but never answers.

Real `redis-server` (tests/redis_server.py), killed and started again on its port; real `vmcp serve` replicas;
plain HTTP clients. The frozen Redis is the real one behind a small TCP proxy of the test's that stops passing
bytes (as a SIGSTOPped Redis: connections taken, nothing answered) and records what the gateway sends
meanwhile. Every wait polls with a deadline; nothing asserts a duration.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from tests.redis_server import RedisServer, running_redis
from tests.support import Gateway, demo_backend, raw_session, running_gateway, running_gateways, write_config
from tests.test_redis_ops import eventually

pytestmark = [pytest.mark.slow]

PREFIX = "t27:"
LISTING = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
CALL = {
    "jsonrpc": "2.0",
    "id": 3,
    "method": "tools/call",
    "params": {"name": "notes_search_notes", "arguments": {"query": "a"}},
}
PING = {"jsonrpc": "2.0", "id": 4, "method": "ping"}


def config(directory: Path, url: str, **settings: Any) -> Path:
    redis_settings = {"url": url, "timeout": 1.0, "key_prefix": PREFIX, **settings.pop("redis", {})}
    return write_config(directory, {"backends": [demo_backend("notes")], "redis": redis_settings, **settings})


def post(url: str, message: dict[str, Any], headers: dict[str, str]) -> httpx2.Response:
    return httpx2.post(url, json=message, headers=headers, timeout=60)


def listeners(admin: redis.Redis) -> int:
    channel = PREFIX + "changes"
    return int(dict(admin.pubsub_numsub(channel)).get(channel.encode(), 0))


def test_a_redis_restart_leaves_a_replica_sharing_changes_serving(tmp_path: Path) -> None:
    with running_redis() as server:
        path = config(tmp_path, server.url, redis={"share_changes": True})
        with running_gateway(path) as gateway:
            eventually(lambda: listeners(redis.Redis(port=server.port)) == 1, "the changes listener subscribed")
            session = raw_session(gateway.url)
            server.stop()  # killed while the listener waits for a message
            # The listener's warning, or (before the fix) the traceback of the lifespan it ended.
            heard = ("not hearing other replicas' changes", "Traceback")
            eventually(lambda: any(word in gateway.output() for word in heard), "the listener's failure logged")
            server.start()
            eventually(lambda: listeners(redis.Redis(port=server.port)) == 1, "the listener subscribed again")
            assert post(gateway.url, CALL, session).status_code == 200, gateway.output()
            raw_session(gateway.url)  # new sessions open: the session manager still runs
            assert httpx2.get(f"{gateway.base}/readyz", timeout=30).status_code == 200
            log = gateway.output()
    assert "Task group is not initialized" not in log, log
    assert "Traceback" not in log, log


def test_a_delete_while_redis_is_down_is_refused_and_the_session_kept(tmp_path: Path) -> None:
    with running_redis() as server:
        path = config(tmp_path, server.url, sessions={"store": "redis"})
        with running_gateways(path, 2) as [first, second]:
            session = raw_session(first.url)
            assert post(second.url, LISTING, session).status_code == 200  # a copy held on the second replica
            server.stop()
            refused = httpx2.delete(first.url, headers=session, timeout=60)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert post(first.url, CALL, session).status_code == 200  # the session is as it was
            server.start()  # empty: the replicas write the session back

            def deleted() -> bool:
                return httpx2.delete(first.url, headers=session, timeout=60).status_code == 200

            eventually(deleted, "the DELETE retried once Redis is back")
            # Ended on every replica, for good: no copy writes it back.
            eventually(lambda: post(second.url, LISTING, session).status_code == 404, "the copy ended")
            admin = redis.Redis(port=server.port)
            assert not [key for key in admin.keys(PREFIX + "session:*")], "the record was written back"
            assert post(first.url, LISTING, session).status_code == 404


class FreezingProxy:
    """TCP to Redis, passed both ways until `freeze`: then connections are still taken but nothing reaches
    Redis or comes back, and what the gateway sends is kept in `heard`. `thaw` closes every connection (they
    are out of step) and passes bytes again."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.heard = bytearray()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
                with self._lock:
                    self._sockets += [client, upstream]
                threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_gateway: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.frozen.is_set():
                    sink.sendall(data)
                elif from_gateway:
                    with self._lock:
                        self.heard += data
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        with self._lock:
            for held in self._sockets:
                with contextlib.suppress(OSError):
                    held.shutdown(socket.SHUT_RDWR)
            self._sockets.clear()
        self.frozen.clear()

    def take_heard(self) -> bytes:
        with self._lock:
            heard, self.heard = bytes(self.heard), bytearray()
        return heard

    def close(self) -> None:
        self.listener.close()
        self.thaw()


@contextlib.contextmanager
def freezing_proxy(server: RedisServer) -> Iterator[FreezingProxy]:
    proxy = FreezingProxy(server.port)
    threading.Thread(target=proxy.serve, daemon=True).start()
    try:
        yield proxy
    finally:
        proxy.close()


def redis_state(gateway: Gateway) -> str:
    return str(httpx2.get(f"{gateway.base}/readyz", timeout=60).json()["redis"]["state"])


def test_a_redis_known_unreachable_is_not_asked_by_each_request(tmp_path: Path) -> None:
    with running_redis() as server, freezing_proxy(server) as proxy:
        path = config(
            tmp_path,
            f"redis://127.0.0.1:{proxy.port}/0",
            sessions={"store": "redis"},
            rate_limits={"store": "redis", "per_caller": {"rate": 100, "burst": 100}},
            limits={"session_idle_timeout": 3600},  # the keep-alive's touches stay out of the test's minute
        )
        with running_gateway(path) as gateway:
            session = raw_session(gateway.url)
            assert post(gateway.url, CALL, session).status_code == 200
            proxy.freeze()
            eventually(lambda: redis_state(gateway) == "unreachable", "a frozen Redis unreachable in /readyz")
            proxy.take_heard()
            for message in (CALL, PING, CALL, PING):
                assert post(gateway.url, message, session).status_code == 200, gateway.output()
            heard = proxy.take_heard()
            # Neither the session's touch nor the rate check was sent to the Redis known not to answer.
            assert b"PEXPIRE" not in heard, heard[:500]
            assert (PREFIX + "rl:").encode() not in heard, heard[:500]
            proxy.thaw()
            eventually(lambda: redis_state(gateway) == "reachable", "Redis reachable again in /readyz")

            def rate_checked() -> bool:
                assert post(gateway.url, CALL, session).status_code == 200
                return bool(redis.Redis(port=server.port).keys(PREFIX + "rl:*"))

            admin = redis.Redis(port=server.port)
            for key in admin.keys(PREFIX + "rl:*"):
                admin.delete(key)
            eventually(rate_checked, "the rate check asking Redis again")
