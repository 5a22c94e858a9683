"""`ReadySignal`: find_tool's wait for the first vectors, on the event loop rather than in a worker thread.

While the model loads (the first seconds after start) a find_tool waits up to `optimizer.vector_wait` for the
vectors. It waited in one of anyio's 40 default worker threads: a burst of find_tool at start (agents
reconnecting after a restart) took them all, and the gateway's other thread work waited behind them.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import suppress

import anyio


class ReadySignal:
    """A flag a thread sets once and event loops wait for, each waiter a future of its own loop woken by the
    setter (`call_soon_threadsafe`): no worker thread held per waiter. A lock makes "not set yet, so wait" and
    "set, so wake the waiters" exclusive, so a wait that starts as the flag is set never misses it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._waiters: set[asyncio.Future[None]] = set()

    def set(self) -> None:
        with self._lock:
            self._set = True
            waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            with suppress(RuntimeError):  # its loop is closed: nobody waits there any more
                waiter.get_loop().call_soon_threadsafe(_settle, waiter)

    async def wait(self, seconds: float) -> None:
        """Until set, at most `seconds`."""
        with self._lock:
            if self._set:
                return
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
        try:
            with anyio.move_on_after(seconds):
                await waiter
        finally:
            with self._lock:
                self._waiters.discard(waiter)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
