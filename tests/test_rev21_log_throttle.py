"""The log throttles remember a bounded number of keys: a library that formats text it was sent into its message
template (or a key of ours built from input) once grew `ThrottledLibraries`' maps for the life of the process."""

from __future__ import annotations

import logging

from vmcp_opt.logs import THROTTLED_LIBRARIES, ThrottledLibraries, ThrottledLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(text: str) -> logging.LogRecord:
    return logging.LogRecord(THROTTLED_LIBRARIES[0], logging.WARNING, __file__, 1, text, None, None)


def test_the_library_throttle_forgets_its_oldest_templates_past_its_cap() -> None:
    clock = Clock()
    throttle = ThrottledLibraries(clock=clock)
    assert throttle.filter(record("kept"))
    assert not throttle.filter(record("kept"))  # held back within the interval, and counted
    for n in range(5000):
        assert throttle.filter(record(f"message {n}"))
    assert len(throttle._last) <= 1024 and len(throttle._held_back) <= 1024
    assert throttle.filter(record("kept"))  # forgotten with its count: let through, as a new template is
    assert not throttle.filter(record("message 4999"))  # the newest are still throttled


def test_the_keyed_throttle_forgets_its_oldest_keys_past_its_cap() -> None:
    throttle = ThrottledLog(logging.getLogger("rev21-throttle"), clock=Clock())
    for n in range(5000):
        throttle.warning(f"key {n}", "a warning")
    assert len(throttle._last) <= 1024


def test_the_sdk_clients_warnings_are_throttled_like_the_other_libraries() -> None:
    """A redirecting HTTP backend: the SDK's client warned twice per reconnect attempt, for hours."""
    throttle = ThrottledLibraries(clock=Clock())
    redirect = "Redirect to https://elsewhere.example/mcp not followed"
    warning = logging.LogRecord("mcp.client.streamable_http", logging.WARNING, __file__, 1, redirect, None, None)
    assert throttle.filter(warning)
    assert not throttle.filter(warning)
    ours = logging.LogRecord("mcp_client_of_ours", logging.WARNING, __file__, 1, redirect, None, None)
    assert throttle.filter(ours) and throttle.filter(ours)  # a name that only starts alike is not the SDK's
