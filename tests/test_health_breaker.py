"""The circuit breaker and the health state machine, on a fake clock: no processes, no sleeping."""

from __future__ import annotations

import pytest

from vmcp_opt.backends.connection import backoff_delay
from vmcp_opt.config import CircuitBreakerConfig, HealthConfig, RestartConfig
from vmcp_opt.health import BackendHealth, CircuitBreaker, CircuitOpen, CircuitState, HealthState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **settings: object) -> CircuitBreaker:
    defaults: dict[str, object] = {"failure_threshold": 3, "cooldown": 10.0, "trial_calls": 2, "minimum_calls": 100}
    return CircuitBreaker("docs", CircuitBreakerConfig.model_validate({**defaults, **settings}), clock=clock)


def test_circuit_opens_after_consecutive_failures_and_refuses_calls_at_once() -> None:
    clock = Clock()
    cb = breaker(clock)
    for _ in range(2):
        cb.before_call()
        cb.record_failure("Connection closed")
    assert cb.state is CircuitState.CLOSED
    cb.before_call()
    cb.record_failure("Connection closed")
    assert cb.state is CircuitState.OPEN
    clock.now += 4
    with pytest.raises(CircuitOpen) as refused:
        cb.before_call()
    message = str(refused.value)
    # The client's text names the backend and the next trial, not why it opened (the log's and /readyz's).
    assert "backend 'docs'" in message and "in 6.0s" in message and "Connection closed" not in message
    assert "3 consecutive failures" in refused.value.reason


def test_a_success_resets_the_consecutive_count() -> None:
    cb = breaker(Clock())
    for _ in range(5):
        cb.record_failure("x")
        cb.record_failure("x")
        cb.record_success(0.01)
    assert cb.state is CircuitState.CLOSED


def test_circuit_opens_on_failure_rate_over_the_window() -> None:
    clock = Clock()
    cb = breaker(clock, failure_threshold=100, minimum_calls=10, failure_rate=0.5, window=30.0)
    for i in range(9):
        if i % 2:
            cb.record_failure("x")
        else:
            cb.record_success(0.01)
    assert cb.state is CircuitState.CLOSED  # 9 outcomes: below minimum_calls
    cb.record_failure("x")
    cb.record_failure("x")
    assert cb.state is CircuitState.OPEN
    assert "of the last" in cb.reason


def test_outcomes_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    cb = breaker(clock, failure_threshold=100, minimum_calls=4, failure_rate=0.7, window=30.0)
    for _ in range(3):
        cb.record_failure("old")
        cb.record_success(0.01)
    clock.now += 31
    cb.record_failure("new")
    assert cb.failure_rate() is None and cb.state is CircuitState.CLOSED


def test_slow_calls_count_as_failures() -> None:
    cb = breaker(Clock(), failure_threshold=2, slow_call=1.0)
    cb.record_success(1.5)
    cb.record_success(2.0)
    assert cb.state is CircuitState.OPEN and "took 2.0s" in cb.reason


def test_half_open_after_cooldown_admits_a_bounded_number_of_trials_then_closes() -> None:
    clock = Clock()
    cb = breaker(clock, failure_threshold=1)
    cb.record_failure("down")
    clock.now += 10
    cb.before_call()
    assert cb.state is CircuitState.HALF_OPEN
    cb.before_call()
    with pytest.raises(CircuitOpen, match="trial call is already running"):
        cb.before_call()  # trial_calls = 2 are in flight
    cb.record_success(0.01)
    assert cb.state is CircuitState.HALF_OPEN
    cb.record_success(0.01)
    assert cb.state is CircuitState.CLOSED
    cb.before_call()


def test_a_failed_trial_opens_the_circuit_again_for_a_full_cooldown() -> None:
    clock = Clock()
    cb = breaker(clock, failure_threshold=1)
    cb.record_failure("down")
    clock.now += 10
    cb.before_call()
    cb.record_failure("still down")
    assert cb.state is CircuitState.OPEN and cb.times_opened == 2
    assert cb.retry_in() == pytest.approx(10.0)


def test_a_cancelled_trial_frees_its_slot() -> None:
    clock = Clock()
    cb = breaker(clock, failure_threshold=1, trial_calls=1)
    cb.record_failure("down")
    clock.now += 10
    cb.before_call()
    cb.release()
    cb.before_call()  # the slot is free again


def test_health_check_outcomes_feed_the_breaker_without_taking_trial_slots() -> None:
    clock = Clock()
    cb = breaker(clock, failure_threshold=1, trial_calls=2)
    cb.record_failure("ping failed", admitted=False)
    assert cb.state is CircuitState.OPEN
    cb.trial()  # the backend was reconnected
    cb.record_success(0.01, admitted=False)
    cb.record_success(0.01, admitted=False)
    assert cb.state is CircuitState.CLOSED


def test_a_disabled_breaker_admits_everything() -> None:
    cb = breaker(Clock(), enabled=False, failure_threshold=1)
    cb.record_failure("x")
    cb.before_call()


def health(**settings: object) -> BackendHealth:
    config = HealthConfig.model_validate({"unhealthy_threshold": 2, "healthy_threshold": 2, **settings})
    return BackendHealth("docs", config)


def test_health_goes_unknown_healthy_degraded_unhealthy_and_recovers_through_degraded() -> None:
    h = health()
    assert h.state is HealthState.UNKNOWN
    h.record_success(0.01)
    assert h.state is HealthState.HEALTHY
    h.record_failure("ping timed out after 1s")
    assert h.state is HealthState.DEGRADED
    h.record_failure("ping timed out after 1s")
    assert h.state is HealthState.UNHEALTHY and h.last_error == "ping timed out after 1s"
    h.record_success(0.01)
    assert h.state is HealthState.DEGRADED
    h.record_success(0.01)
    assert h.state is HealthState.HEALTHY


def test_a_slow_ping_is_degraded_and_a_disconnected_backend_unhealthy_at_once() -> None:
    h = health(degraded_latency=0.5)
    h.record_success(0.8)
    assert h.state is HealthState.DEGRADED
    h.mark_down("not connected (failed: Connection closed)")
    assert h.state is HealthState.UNHEALTHY
    assert h.summary()["last_error"] == "not connected (failed: Connection closed)"


def test_restart_backoff_grows_exponentially_with_bounded_jitter() -> None:
    config = RestartConfig(initial_delay=0.5, max_delay=8.0, multiplier=2.0, jitter=0.2)
    for attempt, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        delays = [backoff_delay(config, attempt) for _ in range(50)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays)
        assert len(set(delays)) > 1  # jittered
