"""Redis Cluster clients (`redis.cluster: true`), built by vmcp_opt/shared/redis_client.py with the connection
classes and settings of the single-server clients: redis-py's `RedisCluster`, seeded from `redis.url`, finds the
other nodes itself. What the gateway needs of them beyond redis-py's:

- Every part treats a cluster no node of which answers as it treats an unreachable Redis: redis-py raises its own
  `RedisClusterUnreachableError` (or `SlotNotCoveredError` mid-failover), which is no `RedisError`, so the parts'
  `except RedisError` let it through and it ended their tasks; it is raised here as a `ConnectionError`.
- MGET of keys in several slots (the replicas' shapes, shared/replica_shapes.py) is read slot by slot: redis-py
  refuses it whole, and those reads need no atomicity.
- The synchronous client (the optimizer's saver thread, `vmcp validate --connect`) is built at its first use:
  redis-py's connects to the cluster as it is constructed, and a cluster down when the gateway starts must be a
  warning at the first merge, not a failed start.

Each caller's keys of one script or transaction share a hash tag, so one slot (`cluster_tag` and its users).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis.cluster
from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import parse_url as async_parse_url
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import ClusterDownError, RedisClusterUnreachableError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

# A cluster's own words for "no node serves this now": an outage, as a refused connection is.
_OUTAGES = (RedisClusterUnreachableError, SlotNotCoveredError)
# What a command is tried again after (once: the clients' `retry`), its map of the slots read again in between: a
# node gone or failed over. redis-py's list less `TimeoutError`: as on a single Redis, an unreachable cluster costs a
# request one `redis.timeout`, not two.
_RETRIED = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)
# What the single-server clients are given that a cluster client takes otherwise (`connection_class`) or not at all.
_NOT_FOR_CLUSTERS = ("link", "retry_on_timeout")


def on_cluster(client: object) -> bool:
    return isinstance(client, AsyncRedisCluster | redis.cluster.RedisCluster | LazySyncCluster)


def cluster_tag(client: object, name: str) -> str:
    """`name` as a hash tag, `{name}`, on a cluster, so the keys holding it share a slot; `name` as it is on a
    single Redis, whose key names stay as they were (an upgrade finds what was written before it)."""
    return "{" + name + "}" if on_cluster(client) else name


@contextlib.contextmanager
def _outage_as_unreachable() -> Iterator[None]:
    try:
        yield
    except _OUTAGES as exc:
        raise RedisConnectionError(f"Redis Cluster: {exc}") from exc


class GatewayCluster(AsyncRedisCluster):
    """redis-py's asyncio cluster client, its outages raised as `ConnectionError` and MGET read per slot."""

    ERRORS_ALLOW_RETRY = _RETRIED  # type: ignore[assignment]  # a shorter tuple than redis-py's

    async def initialize(self, *args: Any, **kwargs: Any) -> GatewayCluster:
        # What a pipeline and pub/sub call first: the cluster's map, read from a node, or the outage.
        with _outage_as_unreachable():
            await super().initialize(*args, **kwargs)
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with _outage_as_unreachable():
            return await super().execute_command(*args, **kwargs)

    async def mget(self, keys: Any, *args: Any) -> Any:  # type: ignore[override]  # same call, any slots
        return await self.mget_nonatomic(keys, *args)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> AsyncClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # redis-py's refusal
        return _GatewayPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py builds its own


class _GatewayPipeline(AsyncClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        with _outage_as_unreachable():
            return await super().execute(raise_on_error, allow_redirections)


class _SyncGatewayCluster(redis.cluster.RedisCluster):
    ERRORS_ALLOW_RETRY = _RETRIED  # type: ignore[assignment]  # a shorter tuple than redis-py's

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with _outage_as_unreachable():
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]  # untyped in redis-py

    def mget(self, keys: Any, *args: Any) -> Any:  # type: ignore[override]  # same call, any slots
        return self.mget_nonatomic(keys, *args)


def async_cluster(url: str, settings: dict[str, Any], connection_class: type, ssl_class: type) -> GatewayCluster:
    """The asyncio client, with `settings` as the single client's (`_RETRIED` says when a command is tried again)."""
    options = _seed(async_parse_url(url))
    tls = options.pop("connection_class", None) is not None  # parse_url names the TLS class for rediss://
    kept = {name: value for name, value in settings.items() if name not in _NOT_FOR_CLUSTERS}
    client = GatewayCluster(**options, **kept, ssl=tls, retry=AsyncRetry(NoBackoff(), 1))
    # redis-py's asyncio cluster takes no connection class: every node is built from these kwargs (the seed
    # already was, from a copy), so the connections report to the link as the single client's do.
    linked = _linked(ssl_class if tls else connection_class, settings["link"])
    client.connection_kwargs["connection_class"] = linked
    for node in client.startup_nodes:
        node.connection_class = linked
    return client


def sync_cluster(url: str, settings: dict[str, Any], connection_class: type, ssl_class: type) -> LazySyncCluster:
    options = _seed(parse_url(url))  # type: ignore[no-untyped-call]  # untyped in redis-py
    tls = options.pop("connection_class", None) is not None
    kept = {name: value for name, value in settings.items() if name != "link"}
    linked = _linked(ssl_class if tls else connection_class, settings["link"])

    def build() -> redis.cluster.RedisCluster:
        # Not `from_url`: it would put redis-py's TLS class back over ours. `retry` is the cluster's own: its nodes
        # are given none (redis-py retries at the cluster's level).
        return _SyncGatewayCluster(**options, **kept, connection_class=linked, retry=Retry(NoBackoff(), 1))

    return LazySyncCluster(build)


def _seed(options: Mapping[str, object]) -> dict[str, Any]:
    """What `redis.url` says, for a cluster client: no database (config checks it is 0; redis-py's synchronous
    cluster refuses even that one named)."""
    return {name: value for name, value in options.items() if name != "db"}


class LazySyncCluster:
    """A synchronous cluster client built at its first use (thread-safe), and again after its build failed."""

    def __init__(self, build: Callable[[], redis.cluster.RedisCluster]) -> None:
        self._build = build
        self._client: redis.cluster.RedisCluster | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._built(), name)

    def _built(self) -> redis.cluster.RedisCluster:
        with self._lock:
            if self._client is None:
                with _outage_as_unreachable():
                    self._client = self._build()
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()  # type: ignore[no-untyped-call]  # untyped in redis-py
                self._client = None


_linked_classes: dict[tuple[type, int], type] = {}
_linked_lock = threading.Lock()


def _linked(base: type, link: object) -> type:
    """`base` (a connection class of redis_client.py) with `link` built in: a cluster client builds its
    connections from kwargs it filters (sync) or takes no class for (asyncio), so the link cannot ride in them."""
    with _linked_lock:
        key = (base, id(link))
        if key not in _linked_classes:
            _linked_classes[key] = type(base.__name__, (base,), {"default_link": link})
        return _linked_classes[key]
