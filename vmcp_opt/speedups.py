"""Per-call costs of the libraries under the gateway that can be removed without changing what they do.

`install()` is called once when the MCP server is built (server/handlers.py); each change checks that the
library is the one it was written against and otherwise leaves it alone.

- anyio asks which event loop runs on nearly every call into it (`get_async_backend`: each checkpoint,
  memory-stream send or receive, `Event`, `CancelScope`, clock read; hundreds per proxied tools/call).
  Without `sniffio` installed (it is not a dependency of anyio 4.x), its `current_async_library` runs an
  `import asyncio` statement and `asyncio.get_running_loop()` inside a try each time: about 8 % of the
  gateway's CPU per proxied call on the 2026-07-28 path. The replacement answers the same ("asyncio" when a
  loop runs in this thread, else None) from asyncio's C accessor, without the import or the exception.
- The SDK's JSON-RPC dispatcher opens an OpenTelemetry CLIENT span around every request it sends (a
  backend call), then injects the current trace context into the request's `_meta`. With no tracer
  provider installed the span is OpenTelemetry's no-op one, which carries the current span's context: the
  replacement skips building it (a context manager, attributes, a context attach and detach: ~5 µs a call)
  when no provider is installed, so the injected context (our own CLIENT span's, when `telemetry.tracing`
  is on) is the same; with a provider it calls the SDK's.
- The garbage collector's full (generation 2) collections walk every tracked object: with the gateway's
  imports and catalogue that is ~165,000 objects and ~90 ms of CPU with the event loop stopped, several
  times a minute under load (each one stalls every call in flight: the p99 under 32 clients).
  `freeze_heap` moves what exists at start-up (modules, config, the gateway, then the first catalogue)
  into the permanent generation (`gc.freeze`, O(1)), which later collections skip; it is still freed by
  reference counting when dropped, and what is created later is collected as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from typing import Any

from opentelemetry.trace import INVALID_SPAN, ProxyTracerProvider, get_tracer_provider

logger = logging.getLogger(__name__)

_installed = False


def _current_async_library() -> str | None:
    return "asyncio" if asyncio._get_running_loop() is not None else None


_NO_SPAN = contextlib.nullcontext(INVALID_SPAN)  # reusable: entering it changes nothing


def _tracing_idle() -> bool:
    """No OpenTelemetry tracer provider is installed: every span the SDK opens is a no-op."""
    return isinstance(get_tracer_provider(), ProxyTracerProvider)


def _idle_span(original: Callable[..., Any]) -> Callable[..., Any]:
    def otel_span(name: str, **options: Any) -> Any:
        if _tracing_idle():
            return _NO_SPAN
        return original(name, **options)

    return otel_span


def install() -> None:
    """Apply every speed-up that applies to the installed libraries (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        from anyio._core import _eventloop
    except ImportError:  # pragma: no cover - anyio moved its internals
        return
    original = getattr(_eventloop, "current_async_library", None)
    if getattr(_eventloop, "sniffio", object()) is None and getattr(original, "__module__", "") == _eventloop.__name__:
        _eventloop.current_async_library = _current_async_library
    else:  # pragma: no cover - sniffio present (it answers) or anyio changed
        logger.debug("anyio speed-up not applied")
    try:
        from mcp.shared import _otel, jsonrpc_dispatcher
    except ImportError:  # pragma: no cover - the SDK moved it
        return
    if getattr(jsonrpc_dispatcher, "otel_span", None) is _otel.otel_span:
        setattr(jsonrpc_dispatcher, "otel_span", _idle_span(_otel.otel_span))  # noqa: B010 (not exported)
    else:  # pragma: no cover
        logger.debug("SDK span speed-up not applied")


def drop_idle_sdk_tracing(server: Any) -> None:
    """Without a global OpenTelemetry tracer provider, the SDK's `OpenTelemetryMiddleware` builds a no-op span
    per request (attributes, context extraction, ~7 µs a call): drop it from `server` (an SDK `Server`), as
    the SDK invites. The gateway's own SERVER span (telemetry/tracing.py, `telemetry.tracing`) does not
    depend on it. With a provider installed (OpenTelemetry auto-instrumentation, `OTEL_PYTHON_TRACER_PROVIDER`)
    the SDK's spans stay."""
    from mcp.server._otel import OpenTelemetryMiddleware

    if _tracing_idle():
        server.middleware = [m for m in server.middleware if not isinstance(m, OpenTelemetryMiddleware)]


def freeze_heap() -> None:
    """Exclude every object tracked now from later collections. No `gc.collect()` first: at start-up it walked
    the ~130,000 objects for 50-80 ms before the listener opened and found nothing to free (bench/README.md,
    thirteenth session); a cycle frozen by mistake is a few bytes kept for good."""
    gc.freeze()
