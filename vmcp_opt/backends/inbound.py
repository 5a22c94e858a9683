"""What a backend's sessions receive, counted by kind: totals for the metric `vmcp_backend_messages_total`, and a
warning, at most one a minute per backend, when one kind comes faster than a backend serving calls sends it.
Every session of a backend goes through here, its shared one and each client's own (backends/session_pool.py
`DedicatedSession`), into the backend's one `InboundMessages`: a backend flooding only the sessions of one client
was uncounted and silent. So the metric's labels stay the configured backend names, never a client's.

Each message costs the gateway's event loop 33-85 µs however useless it is (logs no one asked for, progress for no
call, updates of resources no one subscribed to, answers to no request), and a flood of valid ones was silent: the
loop stayed fair, but a backend could take most of a core and nobody heard of it. `CountedReadStream` wraps the
transport's read stream (stdio, streamable HTTP and SSE alike); it also hands on the stdio reader's `BrokenOutput`
(backends/stdio.py: stdout that is not JSON-RPC), in order, before the stream's end that follows it.

It also mends the lone surrogates (unpaired `\\ud800`-`\\udfff` escapes) of a backend's notifications and requests
(`mended_params`; results are mended where they are measured, backends/results.py): a stdio line is read with `json`,
which lets them through, and a log message or a progress text holding one reached the client's writer, which could
not encode it. Whether a message's text held an escape is not known once it is parsed, so every notification and
request of a backend whose output has shown one (`lone_surrogates.note_line`) is walked: 2-6 µs for a small log
message or progress notification (measured here: a text log 2, a progress 3, a structured log 6). An HTTP backend's are mended before the SDK
parses them (backends/http_bodies.py), as its parse refuses them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import mcp_types as types
from mcp.shared.message import SessionMessage

from vmcp_opt.backends.forwarding import WrappedReadStream
from vmcp_opt.backends.lone_surrogates import escaped, mend, suspected
from vmcp_opt.backends.stdio import BrokenOutput

logger = logging.getLogger(__name__)

# Messages of one kind a backend may send a second, over `INBOUND_WINDOW` seconds, before the operator is told
# (at most once a `INBOUND_WARNING_INTERVAL` per backend). Each costs the event loop 33-85 us however useless
# (logs no one asked for, progress for no call, updates of resources no one subscribed to, answers to no request):
# 500 a second is 2-4 % of a core, far past what a backend serving calls sends.
INBOUND_WARN_RATE = 500
INBOUND_WINDOW = 5.0
INBOUND_WARNING_INTERVAL = 60.0
# The kinds counted (a fixed set: the metric's label values, telemetry/metrics.py `BACKEND_MESSAGE_KINDS`).
_NOTIFICATION_KINDS = {
    "notifications/message": "log",
    "notifications/progress": "progress",
    "notifications/resources/updated": "resource_updated",
    "notifications/tools/list_changed": "list_changed",
    "notifications/prompts/list_changed": "list_changed",
    "notifications/resources/list_changed": "list_changed",
}


def message_kind(message: SessionMessage) -> str:
    """The kind a backend's message is counted as: a notification by its method, else request or response."""
    inner = message.message
    if isinstance(inner, types.JSONRPCNotification):
        return _NOTIFICATION_KINDS.get(inner.method, "notification")
    return "request" if isinstance(inner, types.JSONRPCRequest) else "response"


class InboundMessages:
    """A backend's messages by kind: totals for the metrics (`vmcp_backend_messages`), and a warning, at most one a
    `INBOUND_WARNING_INTERVAL`, when a kind came faster than `INBOUND_WARN_RATE` a second over an `INBOUND_WINDOW`:
    each costs the loop, and a flood of valid ones was silent."""

    def __init__(self, backend: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.clock = clock
        self.totals: dict[str, int] = {}
        self._window: dict[str, int] = {}
        self._window_start = clock()
        self._next_warning = -float("inf")

    def count(self, kind: str) -> None:
        self.totals[kind] = self.totals.get(kind, 0) + 1
        self._window[kind] = self._window.get(kind, 0) + 1
        now = self.clock()
        if now - self._window_start >= INBOUND_WINDOW:
            self._close_window(now)

    def _close_window(self, now: float) -> None:
        kind, most = max(self._window.items(), key=lambda item: item[1])
        rate = most / (now - self._window_start)
        self._window, self._window_start = {}, now
        if rate > INBOUND_WARN_RATE and now >= self._next_warning:
            self._next_warning = now + INBOUND_WARNING_INTERVAL
            logger.warning(
                "backend %s sends %s messages at %.0f a second (its sessions together: shared and clients' own; "
                "more than %d; each costs the gateway's event loop): %d of them so far",
                self.backend,
                kind,
                rate,
                INBOUND_WARN_RATE,
                self.totals[kind],
            )


class CountedReadStream(WrappedReadStream):
    """The transport's read stream (stdio, streamable HTTP, SSE alike), each message counted by kind as the session
    takes it; the stdio reader's `BrokenOutput` acted on here, in order, before the stream's end that follows it
    (the shared connection restarts the backend, a client's own session ends telling its calls why)."""

    def __init__(self, inner: Any, counts: InboundMessages, on_broken: Callable[[BrokenOutput], None]) -> None:
        super().__init__(inner)
        self._counts = counts
        self._on_broken = on_broken

    async def receive(self) -> Any:
        message = await self._inner.receive()
        if isinstance(message, SessionMessage):
            self._counts.count(message_kind(message))
            if suspected(self._counts.backend):  # its stdout showed a lone surrogate (lone_surrogates.note_line)
                mended_params(self._counts.backend, message)
        elif isinstance(message, BrokenOutput):
            self._on_broken(message)
        return message


_MENDED_METHODS: set[tuple[str, str]] = set()  # (backend, method) warned about at WARNING once; later at DEBUG


def mended_params(backend: str, message: SessionMessage) -> None:
    """A notification's or request's params with their lone surrogates replaced by U+FFFD, in place (just parsed,
    held by no one else), with a warning naming the backend and method. A walk over the params on the event loop:
    the message was read there whole, and its size is bounded by the transport (`limits.max_result_bytes`)."""
    inner = message.message
    if not isinstance(inner, types.JSONRPCNotification | types.JSONRPCRequest) or not inner.params:
        return
    mended = mend(inner.params)
    if mended:
        method = escaped(inner.method)
        level = logging.DEBUG if (backend, method) in _MENDED_METHODS else logging.WARNING
        if len(_MENDED_METHODS) < 1024:  # the methods are the backend's to name: the set stays bounded
            _MENDED_METHODS.add((backend, method))
        logger.log(
            level,
            "backend %s: %s had lone surrogates (unpaired \\ud800-\\udfff escapes) in %d of its strings: passed on "
            "with U+FFFD in their place",
            backend,
            method,
            mended,
        )
