"""A backend's health from periodic MCP pings: healthy, degraded, unhealthy or unknown.

unknown ──(ping ok)──► healthy ──(ping fails)──► degraded ──(`unhealthy_threshold` failures in a row)──► unhealthy
unhealthy ──(ping ok)──► degraded ──(`healthy_threshold` good pings in a row)──► healthy
A ping slower than `degraded_latency` is degraded; a backend that is not connected is unhealthy.
Every change is logged with its reason.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from typing import Any

from vmcp_opt.config import HealthConfig

logger = logging.getLogger(__name__)


class HealthState(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class BackendHealth:
    def __init__(self, backend: str, config: HealthConfig) -> None:
        self.backend = backend
        self.config = config
        self.state = HealthState.UNKNOWN
        self.since = time.time()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_check_at: float | None = None
        self.latency: float | None = None
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self._recovering = False  # was unhealthy; needs `healthy_threshold` good pings

    def record_success(self, latency: float) -> None:
        self.last_check_at = time.time()
        self.latency = latency
        self.consecutive_failures = 0
        self.consecutive_successes += 1
        if self._recovering and self.consecutive_successes < self.config.healthy_threshold:
            self._move(
                HealthState.DEGRADED,
                f"recovering ({self.consecutive_successes}/{self.config.healthy_threshold} good pings)",
            )
            return
        self._recovering = False
        if latency > self.config.degraded_latency:
            self._move(
                HealthState.DEGRADED, f"ping took {latency:.2f}s (degraded_latency {self.config.degraded_latency:g}s)"
            )
        else:
            self._move(HealthState.HEALTHY, f"ping answered in {latency * 1000:.1f} ms")

    def _note_failure(self, reason: str) -> None:
        self.last_check_at = time.time()
        self.latency = None
        self.last_error = reason
        self.last_error_at = self.last_check_at
        self.consecutive_successes = 0
        self.consecutive_failures += 1

    def record_failure(self, reason: str) -> None:
        self._note_failure(reason)
        if self.consecutive_failures >= self.config.unhealthy_threshold or self.state is HealthState.UNHEALTHY:
            self._recovering = True
            self._move(HealthState.UNHEALTHY, reason)
        else:
            self._move(HealthState.DEGRADED, reason)

    def mark_down(self, reason: str) -> None:
        """The backend is not connected at all: unhealthy at once."""
        self._note_failure(reason)
        self._recovering = True
        self._move(HealthState.UNHEALTHY, reason)

    def _move(self, state: HealthState, reason: str) -> None:
        if state is self.state:
            return
        log = logger.info if state is HealthState.HEALTHY else logger.warning
        log("backend %s health: %s -> %s (%s)", self.backend, self.state.value, state.value, reason)
        self.state = state
        self.since = time.time()

    def summary(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "since": self.since,
            "last_check_at": self.last_check_at,
            "latency_ms": round(self.latency * 1000, 2) if self.latency is not None else None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "consecutive_failures": self.consecutive_failures,
        }
