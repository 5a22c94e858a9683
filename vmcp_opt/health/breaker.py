"""A per-backend circuit breaker, fed by health checks and by the outcome and latency of real calls.

closed ──(N consecutive failures, or failure rate over the window)──► open
open ──(cool-down elapsed)──► half-open ──(`trial_calls` successes)──► closed
half-open ──(one failure)──► open

Failures count consecutively whether they come from calls or pings; a call's success resets the count, a
ping's success only the pings' part of it: a backend that answers pings while its calls fail (broken answers, a
lost connection, calls that all reach their deadline: health/monitor.py) must still open, and
every ping between two calls would otherwise erase the first failure. For the same reason a ping's success is not an outcome in the failure-rate window,
and it is a trial success only while no call has failed since the circuit last closed (or since the backend's
last new session): a circuit opened by calls is closed by calls, else pings closed it a few seconds into every
half-open and the next `failure_threshold` calls hung their whole timeout again.

A backend that stays down goes open → half-open → open every cool-down: the log says when it opens (warning)
and when it closes again (info), the trials between at debug, with a reminder at warning after
`REMINDER_FIRST` seconds down and then at doubling intervals (at most `REMINDER_MAX` apart), saying for how
long and how many trials failed: not the same two lines every cool-down forever (the schedule is the
reconnect loop's too: vmcp_opt/backends/reconnect_log.py).

Disabled (`failure.circuit_breaker.enabled: false`), it admits every call and counts nothing: a circuit that
refuses nothing must not log "closed -> open" nor show "open" in `/readyz`, where its state reads "disabled".

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

from vmcp_opt.backends.reconnect_log import REMINDER_FIRST as REMINDER_FIRST  # re-exported
from vmcp_opt.backends.reconnect_log import REMINDER_MAX as REMINDER_MAX
from vmcp_opt.backends.reconnect_log import Reminders, duration
from vmcp_opt.config import CircuitBreakerConfig

logger = logging.getLogger(__name__)

_TRIAL_FAILED = "a trial failed: "
_SUMMARY_KEYS = ("state", "reason", "retry_in", "consecutive_failures", "failure_rate", "times_opened")


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Why an open circuit refused a call, as its client is told.
CLIENT_REASON = "its recent calls or health checks failed"


class CircuitOpen(Exception):
    """A call refused at once. Its message, what the client gets, names the backend and when it is tried again,
    never why the circuit opened: `reason` quotes the backend's last error (exception text, its last stderr line:
    hosts, paths, DSNs), for the log and /readyz only. Both in one exception, so no raise site can leak it."""

    def __init__(self, backend: str, reason: str, retry_in: float | None) -> None:
        when = (
            f"the next trial is in {retry_in:.1f}s" if retry_in and retry_in > 0 else "a trial call is already running"
        )
        super().__init__(f"backend '{backend}' is unavailable (circuit open: {CLIENT_REASON}); {when}")
        self.backend = backend
        self.reason = reason
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
        self._calls_failed = False  # a call failed in this outage: only calls may close the circuit then
        self.trial_successes = 0
        self.trials_in_flight = 0
        self.times_opened = 0
        self.down_since: float | None = None  # when it last opened from closed
        self.failed_trials = 0  # since then
        self._reminders = Reminders()  # the "still open" warnings while it stays down
        self._outcomes: deque[tuple[float, bool]] = deque()  # (when, failed) within the window
        self._last_call_success: float | None = None  # when a call last succeeded (a ping's success is not one)

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

    def record_success(self, latency: float = 0.0, *, admitted: bool = True, slow_counts: bool = True) -> None:
        """`slow_counts`: whether a call past `slow_call` is a failure (not when other calls were answered while
        it ran: its arguments made it slow, health/monitor.py)."""
        if not self.config.enabled:
            return
        if slow_counts and latency > self.config.slow_call:
            self.record_failure(
                f"a call took {latency:.1f}s (slow_call is {self.config.slow_call:g}s)", admitted=admitted
            )
            return
        self._advance()
        if admitted:
            self._note(failed=False)
            self._last_call_success = self.clock()
            self.consecutive_failures = 0
            if self.state is CircuitState.CLOSED:
                self._calls_failed = False
        else:  # a ping: the session answers, which says nothing of the calls that failed
            self.consecutive_failures -= self._ping_failures
        self._ping_failures = 0
        if self.state is CircuitState.HALF_OPEN:
            if admitted:
                self.release()
            elif self._calls_failed:
                return  # the session answers; whether calls do now, only a trial call can tell
            self.trial_successes += 1
            if self.trial_successes >= self.config.trial_calls:
                self._move(CircuitState.CLOSED)

    def call_succeeded_since(self, when: float) -> bool:
        """Whether a call succeeded (in time) after `when`, on this breaker's clock."""
        return self._last_call_success is not None and self._last_call_success >= when

    def record_failure(self, reason: str, *, admitted: bool = True) -> None:
        if not self.config.enabled:
            return
        self._advance()
        self._note(failed=True)
        self.consecutive_failures += 1
        if admitted:
            self._calls_failed = True
        else:
            self._ping_failures += 1
        if self.state is CircuitState.HALF_OPEN:
            if admitted:
                self.release()
            self._open(f"{_TRIAL_FAILED}{reason}")
        elif self.state is CircuitState.CLOSED:
            if self.consecutive_failures >= self.config.failure_threshold:
                self._open(f"{self.consecutive_failures} consecutive failures, last: {reason}")
            elif (rate := self.failure_rate()) is not None and rate >= self.config.failure_rate:
                self._open(f"{rate:.0%} of the last {len(self._outcomes)} calls failed, last: {reason}")

    def trial(self) -> None:
        """Let trial calls through now (a backend that was just reconnected deserves one). The calls that failed
        did so on the session that is gone: good pings on the new one may close the circuit."""
        self._calls_failed = False
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
            self._log_move(state)
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
            self._calls_failed = False
            self.reason = ""
            self.down_since = None

    def _log_move(self, state: CircuitState) -> None:
        """The opening and the recovery at their levels; the cycles between at debug, with reminders."""
        now, before = self.clock(), self.state
        if state is CircuitState.OPEN and before is CircuitState.CLOSED:
            self.down_since, self.failed_trials = now, 0
            self._reminders.start(now)
            logger.warning(
                "backend %s circuit closed -> open: %s; trial calls in %gs",
                self.backend,
                self.reason,
                self.config.cooldown,
            )
        elif state is CircuitState.OPEN:
            self.failed_trials += 1
            self._failed_trial(now)
        elif state is CircuitState.CLOSED and self.down_since is not None:
            logger.info(
                "backend %s circuit %s -> closed: recovered after %s open (%d failed trials)",
                self.backend,
                before.value,
                duration(now - self.down_since),
                self.failed_trials,
            )
        else:
            logger.debug("backend %s circuit %s -> %s", self.backend, before.value, state.value)

    def _failed_trial(self, now: float) -> None:
        down = duration(now - (self.down_since if self.down_since is not None else now))
        if not self._reminders.due(now):
            logger.debug("backend %s circuit half_open -> open after %s down: %s", self.backend, down, self.reason)
            return
        logger.warning(
            "backend %s circuit still open after %s (%d trials failed, last: %s); trial calls every %gs",
            self.backend,
            down,
            self.failed_trials,
            self.reason.removeprefix(_TRIAL_FAILED),
            self.config.cooldown,
        )

    def _note(self, *, failed: bool) -> None:
        self._outcomes.append((self.clock(), failed))
        self._prune()

    def _prune(self) -> None:
        horizon = self.clock() - self.config.window
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()

    def summary(self) -> dict[str, Any]:
        if not self.config.enabled:
            # Nothing counted, nothing refused: no state that would suggest otherwise.
            return {**dict.fromkeys(_SUMMARY_KEYS), "state": "disabled", "times_opened": 0}
        retry_in = self.retry_in()
        return {
            "state": self.state.value,
            "reason": self.reason or None,
            "retry_in": round(retry_in, 3) if retry_in is not None else None,
            "consecutive_failures": self.consecutive_failures,
            "failure_rate": self.failure_rate(),
            "times_opened": self.times_opened,
        }
