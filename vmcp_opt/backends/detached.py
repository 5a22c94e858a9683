"""A backend request run so that its caller can stop waiting at once (`detached`), and the bound on what it leaves
running behind (`Cleanups`). Apart from connection.py, which uses it for its shared session's pings and calls, as
session_pool.py does for a client's own session: one mechanism, two sessions."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

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
    """`work()` in a task of `group`, waited for here at most `within` seconds (then `TimeoutError`).

    Once this caller stops waiting (its deadline, or it is cancelled), `work` is cancelled and the caller goes on at
    once; what `work` does on cancellation finishes in `group`. The SDK's cancellation of a request writes a courtesy
    `notifications/cancelled`, shielded and bounded by 5 s (`_ABANDON_WRITE_TIMEOUT`): on an HTTP backend that
    hangs, the transport is still posting the previous message, so that write waited out the 5 s, and every ping
    and call after the first took its deadline plus 5 s. `group` is the session's: its end ends the clean-up too.
    `cleanups` bounds the clean-ups left running (`Cleanups`); past it the caller waits for its own.
    """
    if group is None:  # no session task group (it is ending): as before, inline
        with anyio.fail_after(within):
            return await work()
    outcome: list[T] = []
    failure: list[Exception] = []
    done = anyio.Event()
    scope = anyio.CancelScope()
    left_behind = False  # its caller went on while it was cleaned up: counted in `cleanups`

    async def run() -> None:
        try:
            with scope:
                outcome.append(await work())
        except Exception as exc:  # the caller's to handle, not the session's task group's
            failure.append(exc)
        finally:
            if left_behind and cleanups is not None:
                cleanups.running -= 1
            done.set()

    group.start_soon(run)
    try:
        # No deadline, no scope: a call's (the caller's own `timeouts.call` bounds it) saves a few µs.
        with anyio.fail_after(within) if within != math.inf else contextlib.nullcontext():
            await done.wait()
    finally:
        if not done.is_set():
            scope.cancel()
            if cleanups is None or cleanups.running < cleanups.most:
                left_behind = True
                if cleanups is not None:
                    cleanups.running += 1
            else:
                # The SDK bounds its clean-up (5 s), and the session's end ends it; bounded here too, as a task that
                # its group's end cancelled before it began never sets `done`.
                with anyio.move_on_after(CLEANUP_WAIT, shield=True):
                    await done.wait()
    if failure:
        raise failure[0]
    if not outcome:  # cancelled by the end of its group: the session is over
        raise anyio.ClosedResourceError("the session ended")
    return outcome[0]
