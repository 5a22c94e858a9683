"""Heartbeat keys in Redis (`sessions.store: redis`): each replica's presence, `<prefix>replica:<id>`, which tells
another replica that the one running a request (or holding a round, an inbox) is gone; and `keep_key`, which
keeps any such key alive for as long as the process runs (the SSE writers' progress, shared/events.py; the
answer relays' tags, shared/round_relay.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import anyio
from redis.exceptions import RedisClusterException, RedisError

from vmcp_opt.logs import ThrottledLog
from vmcp_opt.shared.event_scripts import EventsClient

logger = logging.getLogger(__name__)

# What a failed call of the shared sessions' Redis raises. A cluster client's own errors (a slot no node serves,
# mid-failover) are no RedisError, and would end the writer.
STORE_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
# A heartbeat key (a replica's presence, an SSE writer's progress) lives this many beats: a process gone stops
# vouching for what it holds soon after.
_BEATS = 3


async def keep_key(
    client: EventsClient, key: str, value: Callable[[], object], interval: float, log: ThrottledLog, what: str
) -> None:
    """Until cancelled: `key` set to `value()` every `interval`, expiring after `_BEATS` of them, and deleted on
    the way out, so what it vouches for ends with the process (at once when it stops, soon when it dies)."""
    try:
        while True:
            try:
                await client.set(key, str(value()), px=expiry_ms(interval))
            except STORE_ERRORS as exc:
                log.warning(what, "sessions: %s not written: %s", what, type(exc).__name__)
            await anyio.sleep(interval)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(interval), contextlib.suppress(*STORE_ERRORS):
            await client.delete(key)


def expiry_ms(interval: float) -> int:
    return max(1, int(interval * 1000 * _BEATS))


class ReplicaPresence:
    """Each replica's heartbeat key, `<prefix>replica:<id>`, refreshed every `interval` and expiring after
    three: another replica can tell that the one running a request is gone."""

    def __init__(self, client: EventsClient, prefix: str, replica: str, interval: float = 1.0) -> None:
        self.client = client
        self.prefix = prefix + "replica:"
        self.replica = replica
        self.interval = interval
        self._log = ThrottledLog(logger, 60.0)

    async def run(self) -> None:
        """Until cancelled; the key is deleted on the way out, so a stopped replica counts as gone at once."""
        await keep_key(self.client, self.prefix + self.replica, lambda: "1", self.interval, self._log, "heartbeat")

    async def alive(self, replica: str) -> bool:
        return bool(await self.client.exists(self.prefix + replica))
