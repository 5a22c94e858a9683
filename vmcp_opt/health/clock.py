"""How long a call has spent on its backend, as opposed to waiting for the client behind it.

A backend that asks its client for input (sampling, elicitation, roots) waits while a person reads and
answers; that time is not the backend's, and neither is opening a session for the call (it has its own
bound, `timeouts.connect`). The circuit breaker judges a call's latency by backend time
only, and the call's deadline (`timeouts.call`) is paused while the client is being waited for (those
waits have their own bound, `timeouts.input`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class CallClock:
    def __init__(self) -> None:
        self.started = anyio.current_time()
        self.client_time = 0.0
        self._waits = 0  # concurrent asks of one call count once
        self._waiting_since = 0.0
        self._deadline: anyio.CancelScope | None = None
        self._budget = math.inf

    def backend_time(self) -> float:
        now = anyio.current_time()
        waiting = now - self._waiting_since if self._waits else 0.0
        return now - self.started - self.client_time - waiting

    @contextmanager
    def deadline(self, budget: float) -> Iterator[None]:
        """`anyio.fail_after(budget)` over backend time: raises `TimeoutError` once the budget is spent."""
        self._budget = budget
        with anyio.fail_after(max(0.0, budget - self.backend_time())) as scope:
            self._deadline = scope
            if self._waits:
                scope.deadline = math.inf
            try:
                yield
            finally:
                self._deadline = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent in here is not the backend call's: waiting for the client (while any ask is open), or
        opening a session for the call (bounded by `timeouts.connect`). The deadline stops meanwhile."""
        if not self._waits:
            self._waiting_since = anyio.current_time()
            if self._deadline is not None:
                self._deadline.deadline = math.inf
        self._waits += 1
        try:
            yield
        finally:
            self._waits -= 1
            if not self._waits:
                self.client_time += anyio.current_time() - self._waiting_since
                if self._deadline is not None:
                    self._deadline.deadline = anyio.current_time() + max(0.0, self._budget - self.backend_time())
