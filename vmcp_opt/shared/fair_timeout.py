"""A timeout for a wait on a server (Redis) that the event loop's own stalls do not run out: shared/redis_client.py
bounds every answer and connection to Redis with it.

An `asyncio.timeout` expires on the loop's clock. A loop stalled past it (a client's 4 MB bodies parsed back to
back, a catalogue rebuilt) finds the timer and the server's answer ready in the same turn, runs the timer first,
and takes a server that answered in time for one that did not. Here a deadline the loop reached late is moved on
(the server given its whole time again, a few times at most), and one reached in time still lets the loop turn
once more, so what the socket already holds is read first: a server that does not answer is still found within
its timeout, and a client that can stall the loop cannot make the gateway give up on a healthy one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

_T = TypeVar("_T")
# A deadline the loop reached later than this share of the timeout found the loop busy, not the server slow: it is
# moved on, at most `_DEADLINE_MOVES` times (the answer waiting in the socket is read at the loop's next turn; a
# bound, so a loop busy for good still ends the wait).
_LATE_SHARE = 0.1
_DEADLINE_MOVES = 3


class _FairDeadline:
    """Expires `deadline` (an `asyncio.timeout` with none of its own) `seconds` on, one turn of the loop late;
    reached late, moves itself `seconds` on instead."""

    def __init__(self, deadline: asyncio.Timeout, seconds: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.deadline = deadline
        self.seconds = seconds
        self.moves = 0
        self.due = self.loop.time() + seconds
        self.handle = self.loop.call_at(self.due, self._reached)

    def _reached(self) -> None:
        now = self.loop.time()
        if now - self.due > self.seconds * _LATE_SHARE and self.moves < _DEADLINE_MOVES:
            self.moves += 1
            self.due = now + self.seconds
            self.handle = self.loop.call_at(self.due, self._reached)
        else:
            self.deadline.reschedule(now)  # expires at the loop's next turn, after the callbacks already due

    def cancel(self) -> None:
        self.handle.cancel()


async def within_fair_timeout(seconds: float, operation: Awaitable[_T]) -> _T:
    """`operation`, or `TimeoutError` once the server has had `seconds` of a loop that runs."""
    async with asyncio.timeout(None) as deadline:
        watch = _FairDeadline(deadline, seconds)
        try:
            return await operation
        finally:
            watch.cancel()
