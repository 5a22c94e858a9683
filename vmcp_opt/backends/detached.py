"""A backend request run so that its caller can stop waiting at once (`detached`), and the bound on what it leaves
running behind (`Cleanups`). Apart from connection.py, which uses it for its shared session's pings and calls, as
session_pool.py does for a client's own session: one mechanism, two sessions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

T = TypeVar("T")
# Requests given up on whose clean-up (the SDK's courtesy cancel) may run behind their callers at once, per session
# (`Cleanups`): many more than a healthy backend ever has, few enough that a stuck one cannot pile them up.
MAX_DETACHED_CLEANUPS = 16
# Seconds a caller past that bound waits for its own clean-up: the SDK's bound on it (5 s), and a little more.
CLEANUP_WAIT = 6.0


class Cleanups:
    """How many requests given up on (`detached`) are still being cleaned up in one backend session, and how
    many may be at once: past `most`, a caller waits for its own clean-up, as every caller did before requests were
    detached (its admission slot then bounded them per caller). Without a bound, a client that sends a call and
    cancels it, over and over, on a stuck backend left a task and a pending SDK request per call for up to 5 s."""

    __slots__ = ("most", "running")

    def __init__(self, most: int | None = None) -> None:
        self.most = MAX_DETACHED_CLEANUPS if most is None else most
        self.running = 0


async def detached(
    group: TaskGroup | None,
    work: Callable[[], Awaitable[T]],
    *,
    within: float = math.inf,
    cleanups: Cleanups | None = None,
) -> T:
    """`work()` in a task of its own, waited for here at most `within` seconds (then `TimeoutError`).

    Once this caller stops waiting (its deadline, or it is cancelled), `work` is cancelled and the caller goes on at
    once; what `work` does on cancellation finishes in `group`. The SDK's cancellation of a request writes a courtesy
    `notifications/cancelled`, shielded and bounded by 5 s (`_ABANDON_WRITE_TIMEOUT`): on an HTTP backend that
    hangs, the transport is still posting the previous message, so that write waited out the 5 s, and every ping
    and call after the first took its deadline plus 5 s. `group` is the session's: it waits for what is left behind.
    `cleanups` bounds the clean-ups left running (`Cleanups`); past it the caller waits for its own.

    The task is asyncio's own, handed to `group` only when it is left behind: an anyio task of the group for every
    call cost ~60 µs of the event loop's CPU a call (its spawn, an `Event`, a `CancelScope`), a plain task and its
    shield ~20 (bench/README.md, "Twenty-second session"). A task that ends while its caller waits needs no owner;
    one left behind is waited for in `group` (`_left_behind`) until the group ends, and then ends with its
    transport. A call in flight when its session ends gets the SDK's "Connection closed", as before calls were
    detached.
    """
    if group is None:  # no session task group (it is ending): as before, inline
        with anyio.fail_after(within):
            return await work()
    task = asyncio.get_running_loop().create_task(_run(work))  # copies the context: the forwarded headers
    try:
        # No deadline, no scope: a call's (the caller's own `timeouts.call` bounds it) saves a few µs.
        with anyio.fail_after(within) if within != math.inf else contextlib.nullcontext():
            return await asyncio.shield(task)
    except BaseException:
        if not task.done():
            task.cancel()
            room = cleanups is None or cleanups.running < cleanups.most
            if cleanups is not None and room:
                cleanups.running += 1
            task.add_done_callback(functools.partial(_ended, cleanups if room else None))
            if room:
                with contextlib.suppress(RuntimeError):  # the group has ended: the task ends with its transport
                    group.start_soon(_left_behind, task)
            else:
                # The SDK bounds its clean-up (5 s), and the session's end ends it; bounded here too.
                with anyio.move_on_after(CLEANUP_WAIT, shield=True):
                    await asyncio.wait([task])
        raise


async def _run(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def _ended(cleanups: Cleanups | None, task: asyncio.Task[Any]) -> None:
    """A task its caller gave up on has ended: one clean-up fewer, and its outcome read (its caller has gone), so
    that asyncio does not log it as never retrieved."""
    if cleanups is not None:
        cleanups.running -= 1
    if not task.cancelled():
        task.exception()


async def _left_behind(task: asyncio.Task[Any]) -> None:
    """The session's task group waits for a task its caller gave up on; the group's end stops waiting, and the
    task's clean-up then ends with its transport."""
    await asyncio.wait([task])
