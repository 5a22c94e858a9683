"""Slots of costly work handed out fairly between callers: `total` at once, at most `per_caller` to one caller.

Used from the event loop, for work that then runs in a worker thread: template renders (workflows/renders.py)
and find_tool's searches (optimizer/search_slots.py). A caller is a key as the rate limits make it
(`caller_key`: a verified subject, else the client's address, else its session); None is work with no caller
(a command of `vmcp`, unit tests), to which only `total` applies.

Bounds alone are not fair: callers each holding `per_caller` can fill `total`, and a first-come queue puts a
newcomer behind everything the others have queued. So a freed slot goes to the waiting request whose caller
holds fewest now, and among those to the caller served longest ago (then the earliest to ask): a caller waiting
with nothing running is served before any caller that has work running, so every caller with work makes
progress, and the slots spread evenly over the callers that want them (max-min fair share, reached as work
ends, since running work cannot be taken back). This is the simplest rule that is fair across callers; a
per-caller cap alone (say `total / 2`) only keeps two callers going, and weighted or deficit queues would weigh
work by what it costs, which nothing knows in advance.

Each caller's waiters queue first come, first served, so a hand-out compares only the callers that wait, each
by its first waiter: one pass over them, however many each has queued. A waiter that is cancelled leaves its
queue; one cancelled just as it was handed a slot passes the slot on. Nothing is kept for a caller once it
holds and waits for nothing.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field

import anyio

# The limiter `anyio.to_thread.run_sync` is given for work whose threads `FairSlots` already counts (each held
# until its thread ends): anyio's own must not count them again, nor take them from its default pool.
COUNTED_BY_SLOTS = anyio.CapacityLimiter(math.inf)


@dataclass(eq=False)
class _Waiter:
    arrival: int  # the order of asking, across callers: the last tie-break
    given: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class _Caller:
    held: int = 0  # slots held now
    served: int = -1  # the hand-out that last gave it a slot (-1: none yet, so it comes first)
    queue: deque[_Waiter] = field(default_factory=deque)  # its waiters, in order of arrival


class FairSlots:
    """`total` slots, at most `per_caller` to one caller (None: not capped), handed to waiters by fewest
    held, then longest since served, then arrival (the module docstring says why). Used from the event loop
    only: no lock."""

    def __init__(self, total: int, per_caller: int) -> None:
        if not 1 <= per_caller <= total:
            raise ValueError(f"fair slots need 1 <= per_caller ({per_caller}) <= total ({total})")
        self.total = total
        self.free = total
        self.per_caller = per_caller
        # Only callers holding or waiting for a slot: dropped when they do neither.
        self._callers: dict[str | None, _Caller] = {}
        self._waiters = 0
        self._arrivals = itertools.count()
        self._handed = 0  # slots handed out so far: the clock of `_Caller.served`

    def held(self, caller: str | None) -> int:
        """The slots `caller` holds now."""
        state = self._callers.get(caller)
        return 0 if state is None else state.held

    def waiting_of(self, caller: str | None) -> int:
        """`caller`'s requests waiting for a slot now."""
        state = self._callers.get(caller)
        return 0 if state is None else len(state.queue)

    def waiting(self) -> int:
        """Requests waiting for a slot now, of every caller."""
        return self._waiters

    def callers(self) -> int:
        """Callers holding or waiting for a slot (for tests and diagnostics: none are kept after)."""
        return len(self._callers)

    async def acquire(self, caller: str | None) -> None:
        """Wait for a slot for `caller`; `release(caller)` gives it back. Cancelled while waiting, the request
        leaves the queue and holds nothing."""
        state = self._callers.setdefault(caller, _Caller())
        if self._waiters == 0 and self.free > 0 and (caller is None or state.held < self.per_caller):
            self._give(state)  # nobody else waits: the rule could only pick this one; no loop turn spent
            return
        waiter = _Waiter(next(self._arrivals))
        state.queue.append(waiter)
        self._waiters += 1
        self._hand_out()
        try:
            await waiter.given.wait()  # at once when handed a slot above (still a cancellation point)
        except BaseException:
            if waiter.given.is_set():  # given a slot while being cancelled: the next waiter has it
                self.release(caller)
            else:
                state.queue.remove(waiter)
                self._waiters -= 1
                self._forget_if_idle(caller)
            raise

    def release(self, caller: str | None) -> None:
        """Give back a slot `acquire(caller)` took."""
        self._callers[caller].held -= 1
        self.free += 1
        self._forget_if_idle(caller)
        self._hand_out()

    def _hand_out(self) -> None:
        while self.free > 0:
            chosen = self._next_caller()
            if isinstance(chosen, _Nobody):
                return
            state = self._callers[chosen]
            waiter = state.queue.popleft()
            self._waiters -= 1
            self._give(state)
            waiter.given.set()

    def _give(self, state: _Caller) -> None:
        state.held += 1
        self.free -= 1
        self._handed += 1
        state.served = self._handed

    def _next_caller(self) -> str | _Nobody | None:
        """The waiting caller a free slot goes to, or `NOBODY` when none may take one."""
        best: tuple[int, int, int] | None = None
        chosen: str | _Nobody | None = NOBODY
        for caller, state in self._callers.items():
            if not state.queue or (caller is not None and state.held >= self.per_caller):
                continue
            rank = (state.held, state.served, state.queue[0].arrival)
            if best is None or rank < best:
                best, chosen = rank, caller
        return chosen

    def _forget_if_idle(self, caller: str | None) -> None:
        state = self._callers[caller]
        if state.held == 0 and not state.queue:
            del self._callers[caller]


class _Nobody:
    """No caller may take a slot now (None is a caller: work without one)."""


NOBODY = _Nobody()
