"""Failure handling: health checks, circuit breakers, and the guarded path of every routed call."""

from vmcp_opt.health.breaker import CircuitBreaker, CircuitOpen, CircuitState
from vmcp_opt.health.checker import BackendHealth, HealthState
from vmcp_opt.health.clock import CallClock
from vmcp_opt.health.monitor import Guard, HealthMonitor

__all__ = [
    "BackendHealth",
    "CallClock",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "Guard",
    "HealthMonitor",
    "HealthState",
]
