"""find_tool's searches shared fairly: at most `optimizer.find_tool_slots.total` at once, `per_caller` for one caller.

A search is CPU work in a worker thread (a long query: ~10-40 ms, most of it the query embedding, which the
encoder runs at most one per CPU at once). Before these slots every find_tool took a thread of anyio's default
pool (40, shared with the gateway's other thread work: list answers, policy views, backend listings) and then
queued first come, first served for the encoder: one client sending many long queries at once held all 40
threads and put every other caller's find_tool behind its whole flood. Now a search waits on the event loop
for a slot (`FairSlots`, vmcp_opt/fair_slots.py: a freed slot goes to the waiting caller holding fewest), and
only then takes a worker thread, counted by the slots rather than by anyio's default limiter: searches hold at
most `total` threads, none of the 40 the rest of the gateway's thread work shares. A caller may have
`max_waiting_per_caller` searches waiting; past it find_tool answers at once with an error naming the setting.
A search cancelled while waiting (the client cancelled, or went away) leaves the queue; one cancelled while it
runs keeps its slot until its thread has ended.

A caller is keyed as the rate limits key it (`caller_key`), so a client opening a session per request is still
one caller. find_tool without a caller (unit tests) has only the total bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import anyio
import anyio.to_thread

from vmcp_opt.auth.caller import Caller, caller_key
from vmcp_opt.config.optimizer import FindToolSlotsConfig
from vmcp_opt.fair_slots import COUNTED_BY_SLOTS, FairSlots
from vmcp_opt.optimizer.cpu import usable_cpus

T = TypeVar("T")
Args = TypeVarTuple("Args")

SETTING = "optimizer.find_tool_slots.max_waiting_per_caller"


class SearchSlots:
    """The gateway's find_tool search slots."""

    def __init__(self, config: FindToolSlotsConfig, cpus: int | None = None) -> None:
        per_caller = config.per_caller
        total = config.total if config.total is not None else max(cpus or usable_cpus(), per_caller or 1)
        self.slots = FairSlots(total, per_caller if per_caller is not None else total)
        self.max_waiting = config.max_waiting_per_caller

    @staticmethod
    def key(caller: Caller | None) -> str | None:
        """Whose slots a search takes: None when find_tool was called without a caller."""
        return caller_key(caller) if caller is not None else None

    def refusal(self, key: str | None) -> str | None:
        """Why a new search of `key` is refused now (its queue is full), or None. Checked just before `held`,
        with no await between, so the count cannot change in between."""
        if key is None or (self.slots.free > 0 and self.slots.held(key) < self.slots.per_caller):
            return None  # a slot is free for it: it will not wait
        waiting = self.slots.waiting_of(key)
        if waiting < self.max_waiting:
            return None
        return (
            f"too many find_tool requests of this caller waiting ({waiting}, the most allowed by {SETTING}); "
            "retry once some have been answered"
        )

    def held(self, key: str | None) -> _Held:
        """A slot for `key`'s search (`async with`), waited for on the event loop, given back when the block ends."""
        return _Held(self.slots, key)

    @staticmethod
    async def in_thread(work: Callable[[*Args], T], *args: *Args) -> T:
        """`work(*args)` in a worker thread of the searches' own (run inside `held`). Not abandoned when the
        awaiting task is cancelled: the slot must be held until the thread has ended."""
        return await anyio.to_thread.run_sync(work, *args, limiter=COUNTED_BY_SLOTS)


class _Held:
    """`SearchSlots.held`: a plain class, not `asynccontextmanager`, whose generator machinery was half of what a
    search of a lone caller spent on its slot (~5 µs then, ~2.6 µs now)."""

    __slots__ = ("key", "slots")

    def __init__(self, slots: FairSlots, key: str | None) -> None:
        self.slots = slots
        self.key = key

    async def __aenter__(self) -> None:
        await self.slots.acquire(self.key)

    async def __aexit__(self, *exc_info: object) -> None:
        self.slots.release(self.key)
