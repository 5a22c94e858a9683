"""Worker-thread slots for template renders: bounded in total, per caller and per run, handed out fairly.

A render runs in a worker thread (a slow template must not hold the event loop) and may compute for up to
its budget (templates.py, `MAX_RENDER_SECONDS`). The threads are few (`limits.workflow_renders.total` for the whole
gateway, so renders cannot take the threads the rest of the gateway uses), and a client controls what a
template renders: its arguments, and a for_each renders once per item. So a render first takes a slot of its
run (`per_run`: one run's for_each cannot fill the pool), then one of the gateway's (`total`), which a caller
is given only while it holds fewer than `per_caller` (several runs of one client cannot fill it either).

Bounds alone are not fair: callers each holding `per_caller` can fill `total`, and a first-come queue for
the gateway's slots puts a newcomer behind every render the others have queued. So a freed slot goes to
the waiting render whose caller holds fewest now, and among those to the caller served longest ago (then
the earliest to ask): a caller waiting with nothing running is served before any caller that has renders
running, so every caller with work makes progress, and the slots spread evenly over the callers that want
them (max-min fair share, reached as renders end, since a running render cannot be taken back). This is the
simplest rule that is fair across callers; a per-caller cap alone (say `total / 2`) only keeps two callers
going, and weighted or deficit queues would weigh renders that cost what their templates make them cost,
which nothing knows in advance. The rule is `FairSlots` (vmcp_opt/fair_slots.py), which find_tool's searches
share.

Slots are waited for in that order, never held while waiting on anything but the next one (so renders
cannot deadlock), and released together when the thread has ended: a cancelled run's render is told to
stop and waited for, since abandoning it would free its slots while it still computes. That wait is short:
a render looks at its run's deadline and stop signal before every operator, call and filter, and no one
filter call may cost more than `MAX_CALL_UNITS` (~0.5 s of CPU, charged before it runs: filter_costs.py),
so a run that timed out frees its slots within one such call. Before that bound, one `urlize` of a client's
3 MB computed for 14 s past its run's 3 s timeout, and two callers' runs held all 8 slots for a minute. A run started by a
step of another run (a nested workflow, directly or through call_tool) shares the outermost run's slots:
the executor finds the enclosing run (executor.py) and passes its `RunRenders` to `run()`, so nesting
cannot multiply them. The provider keys a caller as the rate limits do (`caller_key`: a verified subject,
else the client's address, else its session), so a client opening a new session for each run is still one
caller; with no caller (`vmcp workflow run`, unit tests) only the run's and the gateway's slots apply.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from vmcp_opt.config.workflows import WorkflowRendersConfig
from vmcp_opt.fair_slots import COUNTED_BY_SLOTS, FairSlots

_DEFAULTS = WorkflowRendersConfig()
# Renders running at once in worker threads, for the whole gateway (`limits.workflow_renders.total`).
MAX_RENDERS = _DEFAULTS.total
# One caller's renders at once, over all its runs: half the pool by default.
MAX_RENDERS_PER_CALLER = _DEFAULTS.per_caller
# One run's renders at once (its nested runs' included): a for_each of many items renders two at a time,
# which costs a cheap template nothing (its calls, not its renders, run `max_parallel` at once).
MAX_RENDERS_PER_RUN = _DEFAULTS.per_run

T = TypeVar("T")


class RenderSlots:
    """The gateway's render slots; `run()` gives one run its share."""

    def __init__(
        self,
        total: int = MAX_RENDERS,
        per_caller: int = MAX_RENDERS_PER_CALLER,
        per_run: int = MAX_RENDERS_PER_RUN,
    ) -> None:
        if not 1 <= per_run <= per_caller <= total:  # the config refuses these with the field's name
            raise ValueError(
                f"render slots need 1 <= per_run ({per_run}) <= per_caller ({per_caller}) <= total ({total})"
            )
        self.total = total
        self.per_caller = per_caller
        self.per_run = per_run
        self._threads = FairSlots(total, per_caller)

    @classmethod
    def of(cls, config: WorkflowRendersConfig) -> RenderSlots:
        return cls(config.total, config.per_caller, config.per_run)

    def run(self, caller: str | None, enclosing: RunRenders | None = None) -> RunRenders:
        """The slots of a new run of `caller` (None: not known), or `enclosing`'s, the run it is nested in."""
        if enclosing is not None and enclosing.slots is self:
            return enclosing
        return RunRenders(self, caller)

    def held(self, caller: str) -> int:
        """The renders `caller` runs now (for tests and diagnostics)."""
        return self._threads.held(caller)

    def callers(self) -> int:
        """The callers with a render running or waiting (for tests and diagnostics: none are kept after)."""
        return self._threads.callers()

    def waiting(self) -> int:
        """The renders waiting for one of the gateway's slots (for tests and diagnostics)."""
        return self._threads.waiting()

    async def render(self, run: RunRenders, work: Callable[[threading.Event], T]) -> T:
        """`work(stop)` in a worker thread once the run has a slot for it and the gateway gives its caller one.
        The slots are held until the thread has ended, even when the awaiting task is cancelled (`stop` is
        set then, and the render ends at its next look at the clock): a client cancelling its runs cannot
        leave renders computing past the bounds."""
        async with run.limiter:
            await self._threads.acquire(run.caller)
            try:
                return await _in_thread(work)
            finally:
                self._threads.release(run.caller)


async def _in_thread(work: Callable[[threading.Event], T]) -> T:
    stop = threading.Event()
    error: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(_stop_when_cancelled, stop)
        try:  # not abandoned on cancellation: the slots must outlive the thread, not the task
            result = await anyio.to_thread.run_sync(work, stop, limiter=COUNTED_BY_SLOTS)
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


# The gateway's slots at their defaults, shared by every run that is not given its own (the executor's
# default; the gateway passes those of its `limits.workflow_renders` settings).
SHARED = RenderSlots()
