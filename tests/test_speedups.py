"""The library speed-ups (vmcp_opt/speedups.py) answer what the originals answer."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest
from anyio._core import _eventloop

from vmcp_opt import speedups


def test_current_async_library_answers_as_anyio_does() -> None:
    speedups.install()
    speedups.install()  # idempotent
    assert _eventloop.current_async_library() is None  # no loop in this thread

    async def inside() -> tuple[str | None, str | None]:
        seen: list[str | None] = []
        thread = threading.Thread(target=lambda: seen.append(_eventloop.current_async_library()))
        thread.start()
        thread.join()
        return _eventloop.current_async_library(), seen[0]

    assert asyncio.run(inside()) == ("asyncio", None)
    assert anyio.run(inside) == ("asyncio", None)
    if _eventloop.sniffio is None:
        assert _eventloop.current_async_library is speedups._current_async_library


def test_the_sdk_client_span_without_a_provider_injects_the_same_context() -> None:
    """No tracer provider: the dispatcher's span is skipped, and `_meta` still gets the current span's context."""
    from mcp.shared import _otel, jsonrpc_dispatcher
    from opentelemetry.context import attach, detach
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        TraceFlags,
        set_span_in_context,
    )

    speedups.install()
    parent = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    token = attach(set_span_in_context(NonRecordingSpan(parent)))
    try:
        injected = []
        for span_of in (_otel.otel_span, jsonrpc_dispatcher.otel_span):
            meta: dict[str, object] = {}
            with span_of("MCP send tools/call", kind=SpanKind.CLIENT, attributes={"a": "b"}) as span:
                span.set_attributes({"error.type": "x"})
                _otel.inject_trace_context(meta)
            injected.append(meta)
    finally:
        detach(token)
    assert injected[0] == injected[1] and "traceparent" in injected[0]


def test_the_sdk_server_span_is_dropped_only_without_a_tracer_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp.server._otel import OpenTelemetryMiddleware
    from mcp.server.lowlevel import Server
    from opentelemetry.sdk.trace import TracerProvider

    from vmcp_opt import speedups

    server: Server[object] = Server("t")
    speedups.drop_idle_sdk_tracing(server)
    assert not any(isinstance(m, OpenTelemetryMiddleware) for m in server.middleware)
    monkeypatch.setattr(speedups, "get_tracer_provider", TracerProvider)
    kept: Server[object] = Server("t")
    speedups.drop_idle_sdk_tracing(kept)
    assert any(isinstance(m, OpenTelemetryMiddleware) for m in kept.middleware)
