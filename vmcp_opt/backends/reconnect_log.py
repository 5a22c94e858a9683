"""What a backend that stays down logs while it is reconnected: not two lines per attempt for hours.

The first failure is a warning with its reason; the attempts after it are at debug, with a reminder at warning
after `REMINDER_FIRST` seconds down and then at doubling intervals (at most `REMINDER_MAX` apart), saying for how
long and how many attempts failed. A reason not yet warned in this outage is worth one warning line (the backend
now fails otherwise: a config or a credential changed, say). The recovery is one line, with the time down and the
attempts it took.

`Reminders` and `duration` are shared with the circuit breaker (vmcp_opt/health/breaker.py), whose open →
half-open → open cycles are logged the same way; they live here, not in `vmcp_opt.health`, because that package
imports this one.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

logger = logging.getLogger("vmcp_opt.backends.connection")  # the connection's lines, under its name as before

REMINDER_FIRST = 300.0  # seconds down before the first "still down" warning
REMINDER_MAX = 3600.0  # the longest gap between two of them (each gap doubles the last, up to this)
# Distinct reasons warned in one outage: a backend whose every error differs (a counter in its message) must
# not get back to a warning per attempt.
_REASONS_WARNED = 10


class Reminders:
    """When a condition that lasts earns another warning: `first` seconds after it began, then at doubling gaps
    of at most `longest`."""

    def __init__(self, first: float = REMINDER_FIRST, longest: float = REMINDER_MAX) -> None:
        self.first = first
        self.longest = longest
        self._gap = first
        self._next = float("inf")

    def start(self, now: float) -> None:
        self._gap, self._next = self.first, now + self.first

    def due(self, now: float) -> bool:
        """True once per reminder; the next one is then scheduled."""
        if now < self._next:
            return False
        self._gap = min(self._gap * 2, self.longest)
        self._next = now + self._gap
        return True


class ReconnectLog:
    """One backend's outages, as its connection reports them."""

    def __init__(self, backend: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.clock = clock
        self.down_since: float | None = None  # None: in service, or not tried yet
        self.attempts = 0  # connection attempts in this outage
        self._served = False  # a session reached READY at some point: "reconnected", not "connected"
        self._warned: set[str] = set()  # this outage's reasons warned, digits aside
        self._reminders = Reminders()

    def failed(self, reason: str, *, lost: bool) -> None:
        """The session was lost (`lost`) or a connection attempt failed."""
        now, kind = self.clock(), _kind(reason)
        self._served = self._served or lost
        if self.down_since is None:
            self.down_since, self.attempts, self._warned = now, 0 if lost else 1, {kind}
            self._reminders.start(now)
            logger.warning("backend %s failed: %s", self.backend, reason)
            return
        self.attempts += 1
        down = duration(now - self.down_since)
        if kind not in self._warned and len(self._warned) < _REASONS_WARNED:
            self._warned.add(kind)
            logger.warning("backend %s failed again (down %s), now: %s", self.backend, down, reason)
        elif self._reminders.due(now):
            logger.warning(
                "backend %s still down after %s (%d attempts failed, last: %s)",
                self.backend,
                down,
                self.attempts,
                reason,
            )
        else:
            logger.debug("backend %s failed (attempt %d, down %s): %s", self.backend, self.attempts, down, reason)

    def retrying(self, delay: float, attempt: int) -> None:
        """The next attempt is `delay` seconds away: said once an outage, the rest at debug."""
        level = logging.INFO if attempt == 1 else logging.DEBUG
        logger.log(level, "backend %s: reconnecting in %.2fs (attempt %d)", self.backend, delay, attempt)

    def ready(self, details: str) -> None:
        """A session reached READY: in service at once, or the outage's one recovery line."""
        if self.down_since is None:
            logger.info("backend %s ready %s", self.backend, details)
        else:
            self.attempts += 1
            logger.info(
                "backend %s %s after %s, %d attempt%s %s",
                self.backend,
                "reconnected" if self._served else "connected",
                duration(self.clock() - self.down_since),
                self.attempts,
                "" if self.attempts == 1 else "s",
                details,
            )
        self.down_since, self._served = None, True


def _kind(reason: str) -> str:
    """A reason with its numbers left out: the same error with another port, pid or time is not news."""
    return re.sub(r"\d+", "#", reason)


def duration(seconds: float) -> str:
    """`seconds` for a person: 45s, 5m 3s, 2h 5m."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    return f"{whole // 3600}h {whole % 3600 // 60}m"
