"""A per-backend circuit breaker, fed by health checks and by the outcome and latency of real calls.

closed ──(N consecutive failures, or failure rate over the window)──► open
open ──(cool-down elapsed)──► half-open ──(`trial_calls` successes)──► closed
half-open ──(one failure)──► open

Failures count consecutively whether they come from calls or pings; a call's success resets the count, a
ping's success only the pings' part of it: a backend that answers pings while its calls time out (a hung
worker behind a live protocol loop) must still open, and every ping between two calls would otherwise
erase the first failure. For the same reason a ping's success is not an outcome in the failure-rate window.

Our own, small and synchronous (the caller awaits the call, the breaker only counts): the asyncio
breakers on PyPI (purgatory, aiobreaker) have consecutive-failure thresholds only, no failure rate
over a window, no latency, and no outcome fed from outside a wrapped call (our health pings).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from vmcp_opt.config import CircuitBreakerConfig

logger = logging.getLogger(__name__)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """A call refused at once: the message names the backend and when it will be tried again."""

    def __init__(self, backend: str, reason: str, retry_in: float | None) -> None:
        when = (
            f"the next trial is in {retry_in:.1f}s" if retry_in and retry_in > 0 else "a trial call is already running"
        )
        super().__init__(f"backend '{backend}' is unavailable (circuit open: {reason}); {when}")
        self.backend = backend
        self.retry_in = retry_in


class CircuitBreaker:
    def __init__(self, backend: str, config: CircuitBreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.config = config
        self.clock = clock
        self.state = CircuitState.CLOSED
        self.opened_at: float | None = None
        self.reason = ""
        self.consecutive_failures = 0  # calls' and pings' together
        self._ping_failures = 0  # the pings' part of `consecutive_failures`: what a good ping resets
        self.trial_successes = 0
        self.trials_in_flight = 0
        self.times_opened = 0
        self._outcomes: deque[tuple[float, bool]] = deque()  # (when, failed) within the window

    # --- admission -------------------------------------------------------------------------------

    def before_call(self) -> None:
        """Admit a call or raise `CircuitOpen`; an admitted call must end in `record_*` or `release`."""
        if not self.config.enabled:
            return
        self._advance()
        if self.state is CircuitState.CLOSED:
            return
        if self.state is CircuitState.HALF_OPEN and self.trials_in_flight < self.config.trial_calls:
            self.trials_in_flight += 1
            return
        raise CircuitOpen(self.backend, self.reason, self.retry_in())

    def release(self) -> None:
        """An admitted call ended with no verdict (cancelled by its caller)."""
        if self.state is CircuitState.HALF_OPEN and self.trials_in_flight > 0:
            self.trials_in_flight -= 1

    def retry_in(self) -> float | None:
        """Seconds until an open circuit lets trial calls through; None unless open."""
        if self.state is not CircuitState.OPEN or self.opened_at is None:
            return None
        return max(0.0, self.opened_at + self.config.cooldown - self.clock())

    # --- outcomes --------------------------------------------------------------------------------

    def record_success(self, latency: float = 0.0, *, admitted: bool = True) -> None:
        if latency > self.config.slow_call:
            self.record_failure(
                f"a call took {latency:.1f}s (slow_call is {self.config.slow_call:g}s)", admitted=admitted
            )
            return
        self._advance()
        if admitted:
            self._note(failed=False)
            self.consecutive_failures = 0
        else:  # a ping: the session answers, which says nothing of the calls that failed
            self.consecutive_failures -= self._ping_failures
        self._ping_failures = 0
        if self.state is CircuitState.HALF_OPEN:
            if admitted:
                self.release()
            self.trial_successes += 1
            if self.trial_successes >= self.config.trial_calls:
                self._move(CircuitState.CLOSED)

    def record_failure(self, reason: str, *, admitted: bool = True) -> None:
        self._advance()
        self._note(failed=True)
        self.consecutive_failures += 1
        if not admitted:
            self._ping_failures += 1
        if self.state is CircuitState.HALF_OPEN:
            if admitted:
                self.release()
            self._open(f"a trial failed: {reason}")
        elif self.state is CircuitState.CLOSED:
            if self.consecutive_failures >= self.config.failure_threshold:
                self._open(f"{self.consecutive_failures} consecutive failures, last: {reason}")
            elif (rate := self.failure_rate()) is not None and rate >= self.config.failure_rate:
                self._open(f"{rate:.0%} of the last {len(self._outcomes)} calls failed, last: {reason}")

    def trial(self) -> None:
        """Let trial calls through now (a backend that was just reconnected deserves one)."""
        if self.state is CircuitState.OPEN:
            self._move(CircuitState.HALF_OPEN)

    def failure_rate(self) -> float | None:
        """The failed share of outcomes in the window, once there are `minimum_calls` of them."""
        self._prune()
        if len(self._outcomes) < self.config.minimum_calls:
            return None
        return sum(failed for _, failed in self._outcomes) / len(self._outcomes)

    # --- internals -------------------------------------------------------------------------------

    def _advance(self) -> None:
        retry_in = self.retry_in()
        if retry_in is not None and retry_in <= 0:
            self._move(CircuitState.HALF_OPEN)

    def _open(self, reason: str) -> None:
        self.reason = reason
        self.times_opened += 1
        self._move(CircuitState.OPEN)

    def _move(self, state: CircuitState) -> None:
        if state is not self.state:
            log = logger.warning if state is CircuitState.OPEN else logger.info
            detail = f": {self.reason}; trial calls in {self.config.cooldown:g}s" if state is CircuitState.OPEN else ""
            log("backend %s circuit %s -> %s%s", self.backend, self.state.value, state.value, detail)
        self.state = state
        self.trial_successes = 0
        self.trials_in_flight = 0
        if state is CircuitState.OPEN:
            self.opened_at = self.clock()
        else:
            self.opened_at = None
        if state is CircuitState.CLOSED:
            self._outcomes.clear()
            self.consecutive_failures = self._ping_failures = 0
            self.reason = ""

    def _note(self, *, failed: bool) -> None:
        self._outcomes.append((self.clock(), failed))
        self._prune()

    def _prune(self) -> None:
        horizon = self.clock() - self.config.window
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()

    def summary(self) -> dict[str, Any]:
        retry_in = self.retry_in()
        return {
            "state": self.state.value,
            "reason": self.reason or None,
            "retry_in": round(retry_in, 3) if retry_in is not None else None,
            "consecutive_failures": self.consecutive_failures,
            "failure_rate": self.failure_rate(),
            "times_opened": self.times_opened,
        }
