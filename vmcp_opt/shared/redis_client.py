"""Redis clients per gateway, from `redis:` (vmcp_opt/config/limits.py): asyncio for the request path,
synchronous for the optimizer's background threads; and `RedisLink`, what this process last learned of
that Redis, for the log and `/readyz`.

Every connection these clients open reports its outcome to the server's `RedisLink` (a connection class of
ours, `connect` overridden: the one place every command of every part passes through, and only when it
opens a connection, so a request costs nothing). The link is a small state machine that logs its
transitions only, never a request or a retry:

    any state ── a connection opened ─────────────▶ reachable         info "reachable again" (from any below;
                                                                          from refusing only by a write)
    any state ── refused, reset, timed out ───────▶ unreachable       warning
    any state ── password refused, or one wanted ─▶ unauthenticated   warning
    any state ── a write refused ─────────────────▶ refusing          warning (full, ACL, read-only replica)

A command that times out (a Redis that takes connections but never answers: stopped, swapping, a dead host
behind a proxy) makes the link unreachable too (`read_response`), and a connection opening does not undo that
(such a Redis takes connections): only a command answered (the probe's write) does. While the link is
unreachable the request path does not ask Redis at all (`usable`, `skip_unless_usable`: a session's touch, a
rate-limit check; both fail open): each request paid a full `redis.timeout` or two for the whole outage. A probe
in the background (`/readyz`'s, at most once a `READY_PING_INTERVAL`, started by the requests skipped) finds
when Redis is back.

A command's `redis.timeout` (its answer's wait, a connection's opening) is measured by `within_fair_timeout`
(shared/fair_timeout.py), not redis-py's timer: a loop a client stalled past that timer (4 MB bodies parsed back
to back) took a healthy Redis for unreachable, and the gateway went without it (rate limits not checked).

redis-py's pools keep every socket a burst opened, with no idle timeout: the link closes its async pools' idle
ones (`drop_idle`) `IDLE_SOCKETS_SECONDS` after a use, and when a failure leaves Redis unreachable.

`unauthenticated` is a configuration error (the password is wrong, or Redis wants one and none is set): its
warning and `/readyz` say so in those words, and never show the password. `refusing` is a Redis that answers
but will not take the gateway's writes: at maxmemory with a policy that evicts nothing, an ACL user without
the rights the gateway needs, a read-only replica. A connection opening says nothing of that, so only a write
taken (`/readyz`'s probe, `accepted`) leaves it. The parts that use Redis treat these as they treat an
unreachable Redis (they degrade and keep serving), and so does `/readyz`: `degraded`, Redis's state and reason
in its detail, the HTTP status what the backends make it.

Past ~450 lines: the link's state (reachable, stalled, refusing), its probe and its pools' idle sockets are one
object's, read together by every client this module makes; splitting them would pass the link's lock around.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from vmcp_opt.config import VmcpConfig
from vmcp_opt.shared.fair_timeout import within_fair_timeout
from vmcp_opt.shared.redis_cluster import async_cluster, sync_cluster
from vmcp_opt.shared.secrets import read_secret, redis_users

logger = logging.getLogger(__name__)

LinkState = Literal["unknown", "reachable", "unreachable", "unauthenticated", "refusing"]
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisLink:
    """One Redis server as this process last found it (thread-safe: the optimizer's saver reports from a thread)."""

    def __init__(self, where: str, password_setting: str | None, users: list[str]) -> None:
        self.where = where  # host:port, never credentials (the URL may not hold any)
        self.password_setting = password_setting  # `redis.password_env: NAME`, or None: no password configured
        self.users = users  # the settings that use Redis, named in the warnings
        self.state: LinkState = "unknown"
        self.problem: str | None = None  # what is wrong, after "Redis" ("refused the password (...)")
        self.client_settings: dict[str, Any] | None = None  # what the clients were built with (`_settings`)
        # `/readyz`'s own client, kept, and when it last pinged (`with_redis_state`); only the event loop uses them.
        self.ready_client: aioredis.Redis | None = None
        self.pinged_at = -math.inf
        self.ping_lock = asyncio.Lock()
        # `/readyz`'s probe for this link (set with the clients' settings), and its run started by `usable`.
        self.probe: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._probing: asyncio.Task[None] | None = None
        self._stalled = False  # unreachable by a command's timeout: only an answer, not a connection, ends it
        self._lock = threading.Lock()
        # The async clients' pools (`_async_client`), whose idle sockets are closed (`drop_idle`): event loop only.
        self.pools: weakref.WeakSet[aioredis.ConnectionPool] = weakref.WeakSet()
        self._idle_timer: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None
        self._dropping: set[asyncio.Task[None]] = set()

    def reached(self) -> None:
        """A connection opened: Redis answers, which says nothing of whether it takes writes (`refusing` stays)."""
        with self._lock:
            kept = self.state == "refusing" or self._stalled
        if not kept:
            self._become("reachable", None)

    def accepted(self) -> None:
        """A write was taken (`/readyz`'s probe): reachable, whatever refused before."""
        self._become("reachable", None)

    def failed(self, exc: BaseException) -> None:
        """A connection failed, a command timed out, or a write was refused; other errors (a script's) say
        nothing of the link."""
        if isinstance(exc, AuthenticationError):
            self._become("unauthenticated", self._auth_problem())
        elif isinstance(exc, _CONNECTION_ERRORS):
            self._become("unreachable", f"unreachable ({type(exc).__name__}: {exc})")
            with self._lock:
                self._stalled = isinstance(exc, RedisTimeoutError | TimeoutError)
        elif isinstance(exc, ResponseError):
            self._become("refusing", refusal(exc))

    def usable(self) -> bool:
        """Whether the request path should ask Redis now: not while it is known unreachable, when a probe is
        started instead (one at a time), which finds when it is back. The event loop's only."""
        if self.state != "unreachable":
            return True
        loop = asyncio.get_running_loop()
        # A task of a loop that has ended (another test's, another `vmcp` command's) never finishes.
        idle = self._probing is None or self._probing.done() or self._probing.get_loop() is not loop
        if self.probe is not None and idle and time.monotonic() - self.pinged_at >= READY_PING_INTERVAL:
            self._probing = loop.create_task(self._probe_quietly(self.probe))
        return False

    def stalled(self) -> bool:
        """Whether Redis is known to answer nothing (frozen, a dead host): asking costs a `redis.timeout`. Probes
        as `usable`. Not after a refusal: asking is then cheap, and finds a Redis just restarted."""
        return not self.usable() and self._stalled

    async def _probe_quietly(self, probe: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await probe()
        except Exception:  # a task nobody awaits: its error would only reach asyncio's "never retrieved"
            logger.exception("redis: probing Redis at %s failed", self.where)

    def used(self) -> None:
        """A pool handed out a connection (event loop): its idle sockets are closed `IDLE_SOCKETS_SECONDS` on,
        one timer at a time, armed again by the next use (none while nothing uses Redis)."""
        loop = asyncio.get_running_loop()
        if self._idle_timer is None or self._idle_timer[0] is not loop:  # another loop's: it has ended
            self._idle_timer = (loop, loop.call_later(IDLE_SOCKETS_SECONDS, self._idle_elapsed))

    def _idle_elapsed(self) -> None:
        self._idle_timer = None
        self.drop_idle()

    def drop_idle(self) -> None:
        """The pools' idle sockets closed (redis-py's own means; reopened when next used). Event loop only."""
        loop = asyncio.get_running_loop()
        for pool in list(self.pools):
            task = loop.create_task(self._disconnect_idle(pool))
            self._dropping.add(task)  # held: a task nobody references may be collected before it runs
            task.add_done_callback(self._dropping.discard)

    async def _disconnect_idle(self, pool: aioredis.ConnectionPool) -> None:
        try:
            await pool.disconnect(inuse_connections=False)
        except Exception as exc:  # a pool of a loop that has ended (another test's); a close that timed out
            logger.debug("redis: idle connections to %s not closed: %s", self.where, exc)

    def detail(self) -> dict[str, Any]:
        """For `/readyz`: the state, and the reason in words (`Redis refused the password (...)`)."""
        with self._lock:
            error = f"Redis {self.problem}" if self.problem else None
            return {"state": self.state, "error": error, "server": self.where, "used_by": self.users}

    def _auth_problem(self) -> str:
        # Named by the setting that holds the password, never by the password.
        if self.password_setting is None:
            return "requires a password (authentication required); set redis.password_env or redis.password_file"
        return f"refused the password ({self.password_setting})"

    def _become(self, state: LinkState, problem: str | None) -> None:
        with self._lock:
            before, self.state, self.problem = self.state, state, problem
            self._stalled = self._stalled and state == "unreachable"
        if state == before:
            return
        if state == "reachable":
            log = logger.debug if before == "unknown" else logger.info
            log("redis: Redis at %s is reachable%s", self.where, "" if before == "unknown" else " again")
            return
        until = {
            "unreachable": "it is back",
            "unauthenticated": "the gateway can authenticate",
            "refusing": "it takes writes again",
        }.get(state, "it is back")
        users = ", ".join(self.users) or "nothing"
        logger.warning("redis: Redis at %s %s; going without it until %s: %s", self.where, problem, until, users)


def refusal(exc: ResponseError) -> str:
    """Why Redis refused a command, after "Redis": full, an ACL user's missing rights, a read-only replica."""
    if isinstance(exc, OutOfMemoryError):
        return (
            "refuses writes: it is full (used memory over maxmemory, and its maxmemory-policy evicts nothing); "
            "raise maxmemory"
        )
    if isinstance(exc, NoPermissionError):
        # Redis's own words name the command or key refused; never a secret.
        return f"refused a command for lack of permission (ACL: the user needs every key under redis.key_prefix): {exc}"
    if isinstance(exc, ReadOnlyError):
        return "refuses writes: it is a read-only replica (redis.url must name the primary)"
    return f"refused a command ({exc})"


def redis_trouble(exc: BaseException) -> str:
    """A Redis error as a warning names it: a refused password as such (never the password), a refused write
    (full, ACL, read-only) as such, else unreachable."""
    if isinstance(exc, AuthenticationError):
        return "Redis refused authentication (the password is wrong, or it wants one)"
    if isinstance(exc, ResponseError):
        return f"Redis {refusal(exc)}"
    return f"Redis unreachable ({exc})"


_links: dict[tuple[str, str | None], RedisLink] = {}
_links_lock = threading.Lock()


def redis_link(config: VmcpConfig) -> RedisLink:
    """The link of the config's Redis: one per server and password source in this process."""
    settings = config.redis
    password_setting: str | None
    source: str | None
    if settings.password_env:
        password_setting = source = f"redis.password_env: {settings.password_env}"
    elif settings.password_file:
        password_setting = f"redis.password_file: {settings.password_file}"
        source = str(config.resolve_path(settings.password_file))
    else:
        password_setting = source = None
    key = (settings.url, source)
    with _links_lock:
        link = _links.get(key)
        if link is None:
            parts = urlsplit(settings.url)
            where = f"{parts.hostname}:{parts.port or 6379}"
            link = _links[key] = RedisLink(where, password_setting, redis_users(config))
        return link


class _LinkedAsync:
    """What both async connection classes add to redis-py's: the link that reports on Redis, fair timeouts on
    opening and reading (shared/fair_timeout.py). Mixed in before `aioredis.Connection` or its SSL subclass."""

    default_link: RedisLink | None = None  # a cluster's: its link built into the class (shared/redis_cluster.py)
    socket_timeout: float | None

    def __init__(self, *, link: RedisLink | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.link = _given(link, self.default_link)

    async def connect(self) -> None:
        await _connect_async(self.link, self.is_connected, super().connect)  # type: ignore[attr-defined, misc]

    async def _connect(self) -> None:
        await _open_fairly(cast(aioredis.Connection, self), super()._connect)  # type: ignore[misc]

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - redis-py's signature: a caller's own limit
        **kwargs: Any,
    ) -> Any:
        read = partial(super().read_response, disable_decoding, **kwargs)  # type: ignore[misc]
        return await _read_async(self.link, _read_fairly(self.link, self.socket_timeout, read, timeout))


class _AsyncConnection(_LinkedAsync, aioredis.Connection):
    pass


class _AsyncSSLConnection(_LinkedAsync, aioredis.SSLConnection):
    pass


class _Connection(redis.Connection):
    default_link: RedisLink | None = None

    def __init__(self, *, link: RedisLink | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]  # untyped in redis-py
        self.link = _given(link, self.default_link)

    def connect(self) -> None:
        _connect(self.link, self.is_connected, super().connect)


class _SSLConnection(redis.SSLConnection):
    default_link: RedisLink | None = None

    def __init__(self, *, link: RedisLink | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.link = _given(link, self.default_link)

    def connect(self) -> None:
        _connect(self.link, self.is_connected, super().connect)


def _given(link: RedisLink | None, default: RedisLink | None) -> RedisLink:
    found = link if link is not None else default
    if found is None:
        raise TypeError("a gateway Redis connection needs its RedisLink")
    return found


async def _connect_async(link: RedisLink, connected: bool, connect: Callable[[], Awaitable[None]]) -> None:
    # `connect` runs before every command (a pool handing out a connection); only opening one says something new.
    link.used()
    if connected:
        return
    try:
        await connect()
    except Exception as exc:
        _failed_async(link, exc)
        raise
    link.reached()


async def _read_async(link: RedisLink, read: Awaitable[Any]) -> Any:
    # An answer's wait past `redis.timeout` (a read the caller bounded itself, a pub/sub poll, returns None).
    try:
        return await read
    except RedisTimeoutError as exc:
        _failed_async(link, exc)
        raise


async def _read_fairly(
    link: RedisLink, limit: float | None, read: Callable[..., Awaitable[Any]], callers_limit: float | None
) -> Any:
    """An answer read within `redis.timeout` by `within_fair_timeout`, not by redis-py's clock (a caller's own
    `timeout`, a pub/sub poll's, is its own: a poll that ends early just polls again)."""
    if callers_limit is not None or not limit:
        return await read(callers_limit)
    try:
        return await within_fair_timeout(limit, read(math.inf))  # redis-py's: none
    except TimeoutError:
        # As redis-py's own timeout: the connection was closed (the read was cancelled), the same error.
        raise RedisTimeoutError(f"Timeout reading from {link.where}") from None


async def _open_fairly(connection: aioredis.Connection, open_socket: Callable[[], Awaitable[None]]) -> None:
    """The socket opened within `redis.timeout` by `within_fair_timeout` (redis-py reads its own limit there)."""
    limit = connection.socket_connect_timeout
    if not limit:
        await open_socket()
        return
    connection.socket_connect_timeout = None
    try:
        await within_fair_timeout(limit, open_socket())  # raises TimeoutError, which redis-py reports as its own
    finally:
        connection.socket_connect_timeout = limit


def _failed_async(link: RedisLink, exc: BaseException) -> None:
    link.failed(exc)
    if link.state == "unreachable":
        link.drop_idle()  # the pools' other sockets to that Redis: each would cost its next user a timeout


def _connect(link: RedisLink, connected: bool, connect: Callable[[], None]) -> None:
    if connected:
        return
    try:
        connect()
    except Exception as exc:
        link.failed(exc)
        raise
    link.reached()


class NotAsked(RedisConnectionError):
    """Raised instead of asking a Redis the link knows is unreachable (`skip_unless_usable`)."""


def skip_unless_usable(link: RedisLink | None) -> None:
    """Raises `NotAsked` while `link` says Redis is unreachable: the caller fails open at once, as it would
    after the command's timeout."""
    if link is not None and not link.usable():
        raise NotAsked(f"not asked until it answers again: {link.where}")


def skip_if_stalled(link: RedisLink | None) -> None:
    """Raises `NotAsked` while `link` knows Redis answers nothing (`stalled`): asking would cost a timeout."""
    if link is not None and link.stalled():
        raise NotAsked(f"not asked until it answers again: {link.where}")


def redis_client(config: VmcpConfig) -> aioredis.Redis:
    """Connects on first use; every command is bounded by `redis.timeout`. A command is tried again once, at
    once, only when its connection was refused or closed (a pooled connection left over from before Redis
    restarted fails its first use), never after a timeout: an unreachable Redis costs a request at most one
    timeout. With `redis.cluster`, redis-py's cluster client seeded from `redis.url` (shared/redis_cluster.py)."""
    return _async_client(config, _settings(config))


def _async_client(config: VmcpConfig, settings: dict[str, Any]) -> aioredis.Redis:
    url = config.redis.url
    if config.redis.cluster:
        # Annotated as the single client, which every user names: the cluster client takes the same commands,
        # and the few places where the two differ test for `RedisCluster` (`cluster_tag`, `events_root`).
        return cast(aioredis.Redis, async_cluster(url, settings, _AsyncConnection, _AsyncSSLConnection))
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        connection_class=_AsyncSSLConnection if url.startswith("rediss://") else _AsyncConnection,
        **settings,
    )
    redis_link(config).pools.add(client.connection_pool)  # its idle sockets closed in time (`drop_idle`)
    return client


def redis_sync_client(config: VmcpConfig) -> redis.Redis:
    """The same settings, for a thread (the optimizer's usage saver)."""
    url = config.redis.url
    if config.redis.cluster:
        return cast(redis.Redis, sync_cluster(url, _settings(config), _Connection, _SSLConnection))
    client: redis.Redis = redis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        connection_class=_SSLConnection if url.startswith("rediss://") else _Connection,
        **_settings(config),
    )
    return client


def _settings(config: VmcpConfig) -> dict[str, Any]:
    """The clients' settings, the password read now; kept on the link for its own checks (`with_redis_state`),
    which so use the password the clients use, not one changed in its file since."""
    settings = config.redis
    password = read_secret(config, "redis.password", settings.password_env, settings.password_file)
    link = redis_link(config)
    link.client_settings = {
        "password": password.decode() if password is not None else None,
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "retry_on_timeout": False,
        "health_check_interval": 0,
        "link": link,  # handed by the pool to each connection it opens (`_AsyncConnection`, `_Connection`)
    }
    link.probe = lambda: _refresh(config, link)
    return dict(link.client_settings)


# Seconds after a pool's use when its idle connections' sockets are closed: a burst's sockets are kept no longer
# (a pool of ours is never smaller than what a burst opened), and a pool in steady use reconnects once in it.
IDLE_SOCKETS_SECONDS = 10.0
# `/readyz` asks Redis at most this often: a probe (or anyone) asking faster reads the last answer, so what
# unauthenticated requests make the gateway spend on Redis stays one write a second on one connection.
READY_PING_INTERVAL = 1.0
# `/readyz`'s write (`_probe`): a PING is answered by a Redis that is full, a read-only replica, or an ACL user
# with no rights on the gateway's keys, none of which takes a session; a write under `key_prefix` is not.
_PROBE_KEY = "ready-probe"
_PROBE_TTL_MS = 5000


async def with_redis_state(config: VmcpConfig, body: dict[str, Any]) -> dict[str, Any]:
    """`/readyz`'s body with Redis's part: Redis probed with a write (at most once a `READY_PING_INTERVAL`,
    concurrent asks sharing one, on a client of its own: Redis gone, back, refusing the password or refusing
    writes shows at once, whatever else uses it), its state and reason under `redis`; a gateway that would be
    `ready` is `degraded` while Redis is not reachable, serving as before (the parts that use Redis go on
    without it)."""
    link = redis_link(config)
    await _refresh(config, link)
    detail = link.detail()
    status = "degraded" if body["status"] == "ready" and detail["state"] != "reachable" else body["status"]
    return {**body, "status": status, "redis": detail}


async def _refresh(config: VmcpConfig, link: RedisLink) -> None:
    """The link's state probed, unless it was within `READY_PING_INTERVAL` (concurrent asks share one)."""
    if time.monotonic() - link.pinged_at >= READY_PING_INTERVAL:
        async with link.ping_lock:
            if time.monotonic() - link.pinged_at >= READY_PING_INTERVAL:
                await _probe(config, link)
                link.pinged_at = time.monotonic()


async def _probe(config: VmcpConfig, link: RedisLink) -> None:
    if link.ready_client is None:
        link.ready_client = _async_client(config, dict(link.client_settings or _settings(config)))
    try:
        await link.ready_client.set(config.redis.key_prefix + _PROBE_KEY, "1", px=_PROBE_TTL_MS)
    except (RedisError, RedisClusterException, OSError) as exc:  # failing to connect is reported by then
        link.failed(exc)
    else:
        link.accepted()


def redis_problem(config: VmcpConfig) -> str | None:
    """What keeps the gateway from using its Redis, checked now (for `vmcp validate --connect`); None: it
    takes a write under `redis.key_prefix`. Never the password."""
    client = redis_sync_client(config)
    try:
        client.set(config.redis.key_prefix + _PROBE_KEY, "1", px=_PROBE_TTL_MS)
    except (RedisError, RedisClusterException, OSError) as exc:
        redis_link(config).failed(exc)
    else:
        redis_link(config).accepted()
    finally:
        client.close()
    detail = redis_link(config).detail()
    return None if detail["state"] == "reachable" else f"redis.url ({detail['server']}): {detail['error']}"
