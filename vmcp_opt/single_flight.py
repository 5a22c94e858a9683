"""One fetch at a time per key, its outcome shared by every caller that needs it meanwhile (single flight).

Used by the incoming-token key cache (auth/jwks.py) and the backend token cache (backends/token_client.py), so a
burst of callers costs one request to the server behind them. `get` asks `ready()` first: an outcome already at hand
(a fresh token, keys fetched recently) needs no flight. Else the first caller runs `fetch` in its own task, and
callers arriving while it runs wait for its outcome, each at most `wait` seconds from its own arrival, then get
`overdue()`; a caller `meanwhile()` can answer without the flight (a token not yet expired, a key held) does not
wait. A failure meant for the waiters is part of the outcome (`fetch` returns it); a flight cut off (its caller
cancelled, or `fetch` raised) has none to share: each waiter looks again, and one fetches anew, bounded by what is
left of its own wait. A caller's first flight is bounded by nothing here: `fetch` bounds itself, and the failure it
returns at its own deadline is its waiters' too (cut off by a deadline of ours, it would leave them none).

Nothing is kept for a key once its flight ends.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")  # the outcome a flight shares; never None, which the callables below use for "none at hand"


def _never() -> None:
    """No caller goes on without the flight."""
    return None


@dataclass
class _Flight(Generic[T]):
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: T | None = None  # None once done: cut off


class SingleFlight(Generic[K, T]):
    """Flights by key; `wait` and `overdue` bound every caller that waits on one."""

    def __init__(self, wait: float, overdue: Callable[[], Exception]) -> None:
        self.wait = wait
        self.overdue = overdue
        self._flights: dict[K, _Flight[T]] = {}

    def __len__(self) -> int:
        """Flights under way."""
        return len(self._flights)

    def running(self, key: K) -> bool:
        return key in self._flights

    async def get(
        self,
        key: K,
        fetch: Callable[[], Awaitable[T]],
        *,
        ready: Callable[[], T | None],
        meanwhile: Callable[[], T | None] = _never,
    ) -> T:
        """`ready()`'s outcome, else the outcome of the flight for `key`: this caller's own, or the one under way
        (unless `meanwhile()` answers), waited for at most `wait` from now."""
        deadline = anyio.current_time() + self.wait
        waited = False
        while (outcome := ready()) is None:
            flight = self._flights.get(key)
            if flight is None:
                return await self._fly(key, fetch, deadline if waited else math.inf)
            if (outcome := meanwhile()) is not None:
                return outcome  # the flight is for the callers to come; this one can go on without it
            waited = True
            with anyio.move_on_after(deadline - anyio.current_time()):
                await flight.done.wait()
            if not flight.done.is_set():
                raise self.overdue()
            if flight.outcome is not None:
                return flight.outcome
            # Cut off: nothing to share; look again (another caller may have fetched meanwhile), else fetch anew.
        return outcome

    async def _fly(self, key: K, fetch: Callable[[], Awaitable[T]], deadline: float) -> T:
        """Run `fetch` as the flight for `key`, by `deadline` (infinite for a caller that has not waited yet)."""
        flight = self._flights[key] = _Flight[T]()
        try:
            with anyio.move_on_after(deadline - anyio.current_time()):
                flight.outcome = await fetch()
                return flight.outcome
        finally:
            del self._flights[key]
            flight.done.set()
        raise self.overdue()
