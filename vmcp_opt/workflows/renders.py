"""Worker-thread slots for template renders: bounded in total, per caller and per run.

A render runs in a worker thread (a slow template must not hold the event loop) and may compute for up to
its budget (templates.py, `MAX_RENDER_SECONDS`). The threads are few (`MAX_RENDERS` for the whole gateway,
so renders cannot take the threads the rest of the gateway uses), and a client controls what a template
renders: its arguments, and a for_each renders once per item. With one pool only, a client running a
couple of costly workflows would hold every slot and every other client's workflow would wait behind it.
So a render takes, in this order, a slot of its run (`per_run`: one run's for_each cannot fill the pool),
of its caller (`per_caller`: several runs of one client cannot either), and of the gateway (`total`).
With `per_caller` under `total`, a caller always leaves slots to the others.

Slots are waited for in that order, never held while waiting on anything but the next one (so renders
cannot deadlock), and released together when the thread has ended: a cancelled run's render is told to
stop and waited for, since abandoning it would free its slots while it still computes. A run started by a
step of another run (a nested workflow, directly or through call_tool) shares the outermost run's slots,
found through a context variable as the call budget is (budget.py): nesting cannot multiply them. The
provider keys a caller as the rate limits do (`caller_key`: a verified subject, else the client's address,
else its session), so a client opening a new session for each run is still one caller; with no caller
(`vmcp workflow run`, unit tests) only the run's and the gateway's slots apply.
"""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import TypeVar

import anyio
import anyio.to_thread

# Renders running at once in worker threads, for the whole gateway.
MAX_RENDERS = 8
# One caller's renders at once, over all its runs: half the pool, so other callers always find a slot.
MAX_RENDERS_PER_CALLER = 4
# One run's renders at once (its nested runs' included): a for_each of many items renders two at a time,
# which costs a cheap template nothing (its calls, not its renders, run `max_parallel` at once).
MAX_RENDERS_PER_RUN = 2

T = TypeVar("T")
# The threads of renders are counted by `RenderSlots` (held until each ends); anyio's own limiter of them,
# which `to_thread` needs, must not count them again.
_COUNTED_ABOVE = anyio.CapacityLimiter(math.inf)


class RenderSlots:
    """The gateway's render slots; `run()` gives one run its share."""

    def __init__(
        self,
        total: int = MAX_RENDERS,
        per_caller: int = MAX_RENDERS_PER_CALLER,
        per_run: int = MAX_RENDERS_PER_RUN,
    ) -> None:
        self.total = total
        self.per_caller = min(per_caller, total)
        self.per_run = min(per_run, self.per_caller)
        self._threads = anyio.CapacityLimiter(total)
        # Only callers with a render running or waiting: dropped when their last one ends.
        self._callers: dict[str, anyio.CapacityLimiter] = {}

    def run(self, caller: str | None) -> RunRenders:
        """The slots of a new run of `caller` (None: not known), or those of the run it is nested in."""
        enclosing = _ENCLOSING.get()
        if enclosing is not None and enclosing.slots is self:
            return enclosing
        return RunRenders(self, caller)

    def held(self, caller: str) -> int:
        """The renders `caller` runs now (for tests and diagnostics)."""
        limiter = self._callers.get(caller)
        return 0 if limiter is None else int(limiter.borrowed_tokens)

    @asynccontextmanager
    async def _of_caller(self, caller: str | None) -> AsyncIterator[None]:
        if caller is None:
            yield
            return
        limiter = self._callers.setdefault(caller, anyio.CapacityLimiter(self.per_caller))
        try:
            async with limiter:
                yield
        finally:
            stats = limiter.statistics()
            if stats.borrowed_tokens == 0 and stats.tasks_waiting == 0 and self._callers.get(caller) is limiter:
                del self._callers[caller]

    async def render(self, run: RunRenders, work: Callable[[threading.Event], T]) -> T:
        """`work(stop)` in a worker thread once the run, its caller and the gateway each have a slot for it.
        The slots are held until the thread has ended, even when the awaiting task is cancelled (`stop` is
        set then, and the render ends at its next look at the clock): a client cancelling its runs cannot
        leave renders computing past the bounds."""
        async with run.limiter, self._of_caller(run.caller), self._threads:
            return await _in_thread(work)


async def _in_thread(work: Callable[[threading.Event], T]) -> T:
    stop = threading.Event()
    error: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(_stop_when_cancelled, stop)
        try:  # not abandoned on cancellation: the slots must outlive the thread, not the task
            result = await anyio.to_thread.run_sync(work, stop, limiter=_COUNTED_ABOVE)
        except Exception as exc:  # raised after the group, which would wrap it in an ExceptionGroup
            error = exc
        group.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


async def _stop_when_cancelled(stop: threading.Event) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        stop.set()


class RunRenders:
    """One run's share of the render slots (and its nested runs')."""

    def __init__(self, slots: RenderSlots, caller: str | None) -> None:
        self.slots = slots
        self.caller = caller
        self.limiter = anyio.CapacityLimiter(slots.per_run)

    async def render(self, work: Callable[[threading.Event], T]) -> T:
        return await self.slots.render(self, work)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Runs started from here (by this run's steps) share these slots."""
        token = _ENCLOSING.set(self)
        try:
            yield
        finally:
            _ENCLOSING.reset(token)


_ENCLOSING: ContextVar[RunRenders | None] = ContextVar("vmcp_workflow_renders", default=None)

# The gateway's slots, shared by every run that is not given its own (the executor's default).
SHARED = RenderSlots()
