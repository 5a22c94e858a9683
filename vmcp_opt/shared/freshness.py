"""Freshness across replicas (`redis.share_changes`): a backend change one replica notices reaches them all.

A replica hears of a backend's change only on its own sessions (the backend's `list_changed`, a lost or
regained connection). Each change the gateway handles (`Gateway._on_backend_change`) is published on the
Redis channel `<redis.key_prefix>changes` as the backend's fingerprint: its connection state and a digest
of its listing. A replica receiving a fingerprint that differs from its own view of that backend re-lists
it and checks its health at once; its own catalogue rebuild then tells its clients (`list_changed`, per
what each may see), as for a change it noticed itself.

Only a fingerprint that differs from the last one this replica saw for the backend is published, so the
echo of a change (the other replicas re-list, find what the first found, and have nothing new to say)
ends the exchange; replicas that disagree for good (each its own backend process, listing different
tools) re-list once and stop. Redis unreachable: nothing is published or heard, each replica stays fresh
for what it notices itself; one warning per interval, and the subscriber reconnects. Built by
`shared.factories.change_broadcast`, the only importer of this module (and so of redis) at serve.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from vmcp_opt.backends.connection import BackendConnection
from vmcp_opt.logs import ThrottledLog

logger = logging.getLogger(__name__)
RECONNECT_DELAY = 1.0
# What a failed Redis call raises (a cluster client's own errors are no RedisError).
_REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
LOG_INTERVAL = 60.0


def fingerprint(connection: BackendConnection) -> str:
    """The backend as this replica sees it: its state and what it lists."""
    listing = connection.listing
    items = [item.model_dump(mode="json", by_alias=True) for kind in _KINDS for item in getattr(listing, kind)]
    digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:32]
    return f"{connection.state.value}:{digest}"


_KINDS = ("tools", "prompts", "resources", "resource_templates")


class ChangeBroadcast:
    def __init__(
        self,
        client: Redis,
        prefix: str,
        connections: Callable[[str], BackendConnection | None],
        check_health: Callable[[BackendConnection], Coroutine[Any, Any, None]],
    ) -> None:
        self.client = client
        self.channel = prefix + "changes"
        self.origin = secrets.token_hex(8)  # this replica, so it ignores its own messages
        self.connections = connections
        self.check_health = check_health
        self._seen: dict[str, str] = {}
        self._log = ThrottledLog(logger, LOG_INTERVAL)

    async def backend_changed(self, connection: BackendConnection) -> None:
        """This replica handled a change of `connection`: tell the others when its fingerprint is new."""
        now = fingerprint(connection)
        if self._seen.get(connection.name) == now:
            return
        self._seen[connection.name] = now
        message = json.dumps({"origin": self.origin, "backend": connection.name, "fingerprint": now})
        try:
            await self.client.publish(self.channel, message)
        except _REDIS_ERRORS as exc:
            self._log.warning("publish", "backend changes not shared (Redis): %s: %s", type(exc).__name__, exc)

    async def run(self) -> None:
        """Hear the other replicas' changes until cancelled; reconnects after a Redis failure."""
        # The task group is outside the retry loop: a Redis error raised inside it came out wrapped in an
        # exception group, which the `except` below did not catch; it ended the HTTP lifespan's task group, and
        # with it the session manager (every request 500 while /readyz said ready).
        async with anyio.create_task_group() as checks:
            while True:
                try:
                    await self._listen(checks)
                except _REDIS_ERRORS as exc:
                    self._log.warning(
                        "listen", "not hearing other replicas' changes (Redis): %s: %s", type(exc).__name__, exc
                    )
                await anyio.sleep(RECONNECT_DELAY)

    async def _listen(self, checks: anyio.abc.TaskGroup) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    self._heard(message["data"], checks)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(RECONNECT_DELAY):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _check(self, connection: BackendConnection) -> None:
        """A health check asked for by another replica's change; its failure is logged, the listener goes on."""
        try:
            await self.check_health(connection)
        except Exception:
            logger.exception("health check of backend %s (changed on another replica) failed", connection.name)

    def _heard(self, data: Any, checks: anyio.abc.TaskGroup) -> None:
        try:
            change = json.loads(data)
            origin, backend, remote = change["origin"], change["backend"], change["fingerprint"]
        except (ValueError, TypeError, KeyError):
            return  # not ours: another program on the channel
        if origin == self.origin or not isinstance(backend, str):
            return
        connection = self.connections(backend)
        if connection is None or fingerprint(connection) == remote:
            return
        logger.info("backend %s changed on another replica: re-listing it", backend)
        connection.refresh_soon()
        checks.start_soon(self._check, connection)
