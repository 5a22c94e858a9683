"""What a backend sends a client without being asked, relayed no faster than the client takes it.

The SDK's client session starts one task per notification it reads and awaits the callback there. Relaying
writes to the calling client, which may read slowly (or not at all while its call runs): a backend writing
progress or log messages in a tight loop then piled up one task, and one pending message, per notification,
without bound (200,000 of 2 KB: about 1 GB in the gateway within half a minute). The MCP specification asks
receivers to rate-limit progress notifications anyway.

- `coalesced`: a call's progress, one relay in flight; what arrives meanwhile replaces what is waiting, so
  at most the latest waits. Progress only grows, so the client still sees where the call stands. `close()`
  as the call ends: the SDK keeps the callback until its courtesy cancel is written (up to 5 s on a stuck HTTP
  backend), and progress after the answer must not reach the client (the spec: it stops with the request).
- `NotificationBound`: a session's log messages and resource updates, each a message of its own, at most
  `MAX_NOTIFICATIONS_IN_FLIGHT` relays at once; past it they are dropped, counted in a warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from mcp.shared.dispatcher import ProgressFnT

logger = logging.getLogger(__name__)

# Relays of one session's notifications waiting on its client at once: what a client that reads its stream
# takes in stride, and a bound on what one that does not read can make the gateway hold.
MAX_NOTIFICATIONS_IN_FLIGHT = 64
# Seconds between two warnings about one session's dropped notifications.
DROP_WARNING_INTERVAL = 60.0

_Progress = tuple[float, float | None, str | None]


class Coalescing:
    """One call's progress relay: at most one notification in flight and one waiting; none once `close`d."""

    def __init__(self, relay: ProgressFnT) -> None:
        self._relay = relay
        self._waiting: _Progress | None = None
        self._relaying = False
        self._closed = False

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        if self._closed:
            return
        self._waiting = (progress, total, message)
        if self._relaying:
            return  # the task relaying now sends it when it is done: this one ends at once
        self._relaying = True
        try:
            while self._waiting is not None and not self._closed:
                latest, self._waiting = self._waiting, None
                await self._relay(*latest)
        finally:
            self._relaying = False

    def close(self) -> None:
        """The call is over (answered, failed or given up on): what the backend still reports is dropped."""
        self._closed = True
        self._waiting = None


def coalesced(relay: ProgressFnT | None) -> Coalescing | None:
    """`relay`, with at most one notification in flight and one waiting (the latest) for one call."""
    return None if relay is None else Coalescing(relay)


class NotificationBound:
    """At most `most` of one session's notifications on their way to its client; the rest dropped."""

    def __init__(self, backend: str, *, most: int = MAX_NOTIFICATIONS_IN_FLIGHT) -> None:
        self.backend = backend
        self.most = most
        self.in_flight = 0
        self.dropped = 0
        self._warned_at: float | None = None

    async def relay(self, send: Callable[[], Awaitable[None]]) -> None:
        if self.in_flight >= self.most:
            self._drop()
            return
        self.in_flight += 1
        try:
            await send()
        finally:
            self.in_flight -= 1

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= DROP_WARNING_INTERVAL:
            self._warned_at = now
            logger.warning(
                "backend %s: %d notifications (log messages, resource updates) dropped so far: its client reads "
                "them slower than the backend sends them (at most %d wait at once)",
                self.backend,
                self.dropped,
                self.most,
            )
