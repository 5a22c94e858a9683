"""A backend session's `notifications/cancelled` written without holding up whoever gave up on a request.

When a call or a ping is given up on (its deadline, the client's cancel), the SDK writes a courtesy
`notifications/cancelled`, shielded and bounded by 5 s (`_ABANDON_WRITE_TIMEOUT`), before the caller may go on. On
a backend whose transport is stuck (an HTTP backend that hangs: its writer still posting the previous message; a
stdio backend that stopped reading its stdin) that write waited out the 5 s, so every ping and call after the
first took its deadline plus 5 s.

Here one task of the transport's own writes them, in order, from a queue (each bounded by the same 5 s): at once
when the writer is free, later when it is not. A cancel is dropped (logged) only when the transport has stalled:
its oldest waiting cancel (the one being written included) has waited `STALLED_SECONDS`, so the peer is not reading
them anyway; or when `MAX_WAITING_CANCELS` wait already, which bounds what a stuck transport holds before that. One
task per transport, not one per cancel: counting cancels merely handed to tasks dropped all but 16 of a workflow's
40 cancels sent at once to a healthy stdio backend, whose other 24 calls ran to their end.

This replaced running every backend request in a task of its own so that its caller could leave while the cancel
was written: that cost every call a task hop (2 or 3 more event-loop turns, +91k to +130k instructions a call
after +254k at first; bench/README.md, "Twenty-second session"), where this costs a call nothing (one idle task
per transport).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage

from vmcp_opt.backends.forwarding import WrappedWriteStream

logger = logging.getLogger(__name__)

# Courtesy cancels of one transport waiting at once: past any fan-out a healthy backend is cancelled in at once (a
# workflow's `max_parallel`, many clients giving up together), few enough that a stuck one holds little.
MAX_WAITING_CANCELS = 1024
# Seconds a waiting cancel may take to be written: the SDK's own bound on it.
CANCEL_WRITE_SECONDS = 5.0
# Seconds the oldest waiting cancel may have waited before new ones are dropped: a healthy transport writes a
# cancel in milliseconds, a whole fan-out's well within this.
STALLED_SECONDS = 2.0


class CancelsWithoutWaiting(WrappedWriteStream):
    """A transport write stream whose `notifications/cancelled` never wait for a busy writer (module docstring)."""

    def __init__(self, inner: Any, backend: str) -> None:
        super().__init__(inner)
        self._backend = backend
        self.most = MAX_WAITING_CANCELS
        self._queue: deque[tuple[float, SessionMessage]] = deque()  # (when queued, the cancel)
        self._writing_since: float | None = None  # the cancel being written: when it was queued
        self._queued = anyio.Event()

    @property
    def waiting(self) -> int:
        """Cancels not yet taken by the transport's writer (the one being written included)."""
        return len(self._queue) + (self._writing_since is not None)

    async def send(self, item: Any) -> None:
        if not _is_cancel(item):
            await self._inner.send(item)
            return
        # Never written here: a transport's write stream may not say whether its writer is free (the SDK's wraps its
        # memory stream without `send_nowait`), and a cancel is rare: one per call given up on.
        refused = self._refusal(time.monotonic())
        if refused is not None:
            logger.info("backend %s: a courtesy cancel not sent: %s", self._backend, refused)
            return
        self._queue.append((time.monotonic(), item))
        self._queued.set()

    def _refusal(self, now: float) -> str | None:
        if self.waiting >= self.most:
            return f"{self.waiting} already wait for its transport, the most that may"
        # The cancel being written was queued before any still queued.
        oldest = self._writing_since if self._writing_since is not None else self._queue[0][0] if self._queue else None
        if oldest is not None and now - oldest >= STALLED_SECONDS:
            return f"its transport has not taken the oldest of the {self.waiting} waiting for {now - oldest:.0f}s"
        return None

    async def write_queued(self) -> None:
        """The transport's cancel writer: runs until the transport closes (its task is cancelled then)."""
        while True:
            while not self._queue:
                await self._queued.wait()
                self._queued = anyio.Event()
            self._writing_since, item = self._queue.popleft()
            try:
                with anyio.move_on_after(CANCEL_WRITE_SECONDS):
                    await self._inner.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._queue.clear()  # the transport ended: the requests they cancel ended with it
            finally:
                self._writing_since = None


def _is_cancel(item: Any) -> bool:
    message = item.message if isinstance(item, SessionMessage) else None
    return isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled"


@asynccontextmanager
async def cancels_without_waiting(streams: TransportStreams, backend: str) -> AsyncIterator[TransportStreams]:
    """`streams` with the write side's cancels sent by `CancelsWithoutWaiting`; the cancels still waiting when the
    transport closes are dropped with it."""
    read, write = streams
    cancels = CancelsWithoutWaiting(write, backend)
    async with anyio.create_task_group() as group:
        group.start_soon(cancels.write_queued, name=f"courtesy cancels of {backend}")
        try:
            yield read, cancels
        finally:
            group.cancel_scope.cancel()
