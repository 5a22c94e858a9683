"""A backend session's `notifications/cancelled` written without holding up whoever gave up on a request.

When a call or a ping is given up on (its deadline, the client's cancel), the SDK writes a courtesy
`notifications/cancelled`, shielded and bounded by 5 s (`_ABANDON_WRITE_TIMEOUT`), before the caller may go on. On
a backend whose transport is stuck (an HTTP backend that hangs: its writer still posting the previous message; a
stdio backend that stopped reading its stdin) that write waited out the 5 s, so every ping and call after the
first took its deadline plus 5 s. Here a task of the transport's own sends it (bounded by the same 5 s): at once
when the writer is free, later when it is not; at most `MAX_WAITING_CANCELS` wait at once, and past that one is
dropped (logged): the peer is not reading them anyway, and a courtesy is not worth a task and a message held per
abandoned call.

This replaced running every backend request in a task of its own so that its caller could leave while the cancel
was written: that cost every call a task hop (2 or 3 more event-loop turns, +91k to +130k instructions a call
after +254k at first; bench/README.md, "Twenty-second session"), where this costs nothing until a cancel waits.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskGroup
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage

from vmcp_opt.backends.forwarding import WrappedWriteStream

logger = logging.getLogger(__name__)

# Courtesy cancels of one transport waiting for its writer at once: many more than a healthy backend ever has,
# few enough that a stuck one cannot pile up tasks and messages.
MAX_WAITING_CANCELS = 16
# Seconds a waiting cancel may take to be written: the SDK's own bound on it.
CANCEL_WRITE_SECONDS = 5.0


class CancelsWithoutWaiting(WrappedWriteStream):
    """A transport write stream whose `notifications/cancelled` never wait for a busy writer (module docstring)."""

    def __init__(self, inner: Any, group: TaskGroup, backend: str) -> None:
        super().__init__(inner)
        self._group = group
        self._backend = backend
        self.most = MAX_WAITING_CANCELS
        self.waiting = 0  # cancels handed to `group`, not yet taken by the writer

    async def send(self, item: Any) -> None:
        if not _is_cancel(item):
            await self._inner.send(item)
            return
        # Always from a task: a transport's write stream may not say whether its writer is free (the SDK's wraps
        # its memory stream without `send_nowait`), and a cancel is rare: one per call given up on.
        if self.waiting >= self.most:
            logger.info(
                "backend %s: a courtesy cancel not sent: %d already wait for its transport, which takes none",
                self._backend,
                self.waiting,
            )
            return
        self.waiting += 1
        try:
            self._group.start_soon(self._send, item)
        except RuntimeError:  # the transport is closing: nothing will be written any more
            self.waiting -= 1

    async def _send(self, item: SessionMessage) -> None:
        try:
            with anyio.move_on_after(CANCEL_WRITE_SECONDS):
                await self._inner.send(item)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the transport ended: the request it cancels ended with it
        finally:
            self.waiting -= 1


def _is_cancel(item: Any) -> bool:
    message = item.message if isinstance(item, SessionMessage) else None
    return isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled"


@asynccontextmanager
async def cancels_without_waiting(streams: TransportStreams, backend: str) -> AsyncIterator[TransportStreams]:
    """`streams` with the write side's cancels sent by `CancelsWithoutWaiting`; the cancels still waiting when the
    transport closes are dropped with it."""
    read, write = streams
    async with anyio.create_task_group() as group:
        try:
            yield read, CancelsWithoutWaiting(write, group, backend)
        finally:
            group.cancel_scope.cancel()
