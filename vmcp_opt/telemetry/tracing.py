"""OpenTelemetry traces of the router's operations, with the MCP semantic conventions.

One span per operation (routing/operations.py):

    SERVER   "tools/call notes_save_note"   a client's request (named "{mcp.method.name} {target}")
    INTERNAL "tools/call notes_save_note"   a request made inside another: call_tool's target, a workflow step
    CLIENT   "tools/call save_note"         each request sent to a backend, under the request it serves

A client's W3C trace context (`traceparent`, `tracestate` in the request's `_meta`) is the parent of the
SERVER span. While a backend request runs, its CLIENT span is OpenTelemetry's current context, and the MCP
SDK's client injects the current context into every outbound request's `_meta` (SEP-414), so one trace runs
client → gateway → backend.

Attributes are the MCP and GenAI conventions' (`mcp.method.name`, `mcp.session.id`, `mcp.protocol.version`,
`jsonrpc.request.id`, `gen_ai.tool.name`, `error.type`) and ours under `vmcp.` (backend, outcome as the audit log
states it, `input_required` for a 2026-07-28 request answered with a question, find_tool's
result count, ranking mode and top score, a step's workflow). `mcp.session.id` is the caller id (a digest
for sessions and credentials), never a raw session id; no arguments or results are recorded.

Why spans are not the SDK's `Tracer.start_span`: each SDK span cost 14 to 19 µs here (attribute cleaning,
locks, the processor fan-out), two or three per proxied call, against a budget of 50 µs for all telemetry.
An operation's span is instead an id pair and a start time while it runs, and one `ReadableSpan` (the type
exporters read) built when it ends from attributes we make clean (a fixed vocabulary of str, int and
float), handed to the SDK's `BatchSpanProcessor`. Kept from the SDK: the id generator, the sampler (asked
once per trace root, as `ParentBased` would; children follow their parent), the batching, its bounded queue
and `OTEL_BSP_*` settings (read here: a value the SDK would refuse is replaced, with a warning, rather than stop
the start), and the OTLP exporters, which read the standard `OTEL_EXPORTER_OTLP_*` variables
(`OTEL_EXPORTER_OTLP_PROTOCOL=grpc` needs the `grpc` extra, opentelemetry-exporter-otlp-proto-grpc).

The queue drops spans once full (a for_each over 1,000 items makes 2,002, past the default 2,048 with another
client's), and the SDK says so only in a warning per span. So spans are counted as they are handed to the
processor and as the exporter takes them (`_Counted`); with `OTEL_BSP_MAX_QUEUE_SIZE` of them waiting, a span is
dropped here instead, counted (`Tracing.dropped`, exported as `vmcp_trace_spans_dropped_total`) and logged at
most once a minute.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from contextvars import Token
from dataclasses import dataclass
from typing import Any, cast

from opentelemetry.context import Context, attach, detach
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from vmcp_opt.config import TracingConfig
from vmcp_opt.display import shorten
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing.operations import Operation
from vmcp_opt.routing.providers import GATEWAY_SOURCE
from vmcp_opt.telemetry.names import INPUT_REQUIRED, event_outcome, find_tool_summary
from vmcp_opt.telemetry.redact import masked_target
from vmcp_opt.workflows.provider import WORKFLOW_SOURCE

logger = logging.getLogger(__name__)
_KEY = "span"  # this watcher's entry in `Operation.notes`
# Seconds the shutdown waits for queued spans to leave: a collector that is down or never answers would
# otherwise hold it for the exporter's retries (up to OTEL_EXPORTER_OTLP_TIMEOUT, 10 s, per batch).
CLOSE_TIMEOUT = 2.0
# A client chooses the target, its request id and protocol version: span names and attributes keep this much of
# each, or one request would put megabytes into a span, the exporter's queue and a batch the collector refuses.
_MAX_NAME = 200
_PROPAGATOR = TraceContextTextMapPropagator()
_SCOPE = InstrumentationScope("vmcp_opt.telemetry.tracing")
_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
# Not "cancelled": a client that stopped waiting is no error of the gateway's or the backend's; nor
# "input_required": a 2026-07-28 request answered with a question, the call going on with its retry.
_ERROR = {outcome: Status(StatusCode.ERROR, outcome) for outcome in ("failure", "denied", "application_error")}
_UNSET = Status(StatusCode.UNSET)
_RECORDED = (Decision.RECORD_AND_SAMPLE,)  # RECORD_ONLY spans are never exported
# The SDK's defaults for OTEL_BSP_MAX_QUEUE_SIZE, _SCHEDULE_DELAY, _MAX_EXPORT_BATCH_SIZE and _EXPORT_TIMEOUT.
_QUEUE_SIZE, _SCHEDULE_DELAY_MS, _BATCH_SIZE, _EXPORT_TIMEOUT_MS = 2048, 5000, 512, 30000


@dataclass(slots=True)
class _Running:
    """An operation's span while it runs: what its children and its end need."""

    context: SpanContext
    parent: SpanContext | None
    kind: SpanKind
    start_ns: int
    token: Token[Context] | None  # the attached OpenTelemetry context (backend requests only)


class _Counted(SpanExporter):
    """The exporter, counting the spans the processor's worker took from its queue and handed to it."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.taken = 0  # written by the processor's worker thread only (and by the flush at shutdown)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.taken += len(spans)
        return self.exporter.export(spans)

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        # Passed on as given: an SDK that hands the exporter a `timeout_millis` must reach the real exporter.
        self.exporter.shutdown(*args, **kwargs)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class Tracing:
    """An `OperationWatcher` giving each operation a span, exported when the operation ends."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        sampler = ParentBased(TraceIdRatioBased(config.sample_ratio)) if config.sample_ratio is not None else None
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "vmcp-opt"})
        # The provider reads `OTEL_TRACES_SAMPLER` when no ratio is configured, and owns the processor's
        # flush and shutdown; its tracer is not used (see the module's docstring).
        self.provider = TracerProvider(sampler=sampler, resource=resource)
        self.exporter = _Counted(exporter or otlp_exporter())
        batching = batch_settings()
        self.queue_size = batching.max_queue_size
        self.processor = BatchSpanProcessor(
            self.exporter,
            max_queue_size=batching.max_queue_size,
            schedule_delay_millis=batching.schedule_delay_millis,
            max_export_batch_size=batching.max_export_batch_size,
            export_timeout_millis=batching.export_timeout_millis,
        )
        self.provider.add_span_processor(self.processor)
        self.handed = 0  # spans given to the processor (on the event loop)
        self.dropped = 0  # spans dropped because that many were waiting for the exporter
        self._full_log = ThrottledLog(logger)
        self._sampler = self.provider.sampler
        self._resource = self.provider.resource
        self._ids = RandomIdGenerator()

    def operation_started(self, op: Operation) -> None:
        parent: _Running | None = op.parent.notes.get(_KEY) if op.parent is not None else None
        if parent is not None:  # ours: same trace, same sampling decision
            kind = SpanKind.CLIENT if op.kind == "backend" else SpanKind.INTERNAL
            context = SpanContext(
                parent.context.trace_id,
                self._ids.generate_span_id(),
                False,
                parent.context.trace_flags,
                parent.context.trace_state,
            )
            parent_context: SpanContext | None = parent.context
        else:
            kind = SpanKind.CLIENT if op.kind == "backend" else SpanKind.SERVER
            context, parent_context = self._root(op, kind)
        token = None
        if op.kind == "backend":  # the MCP SDK's client sends the current context to the backend
            token = attach(set_span_in_context(NonRecordingSpan(context)))
        op.notes[_KEY] = _Running(context, parent_context, kind, time.time_ns(), token)

    def _root(self, op: Operation, kind: SpanKind) -> tuple[SpanContext, SpanContext | None]:
        """A span without a parent of ours: under the client's trace context if it sent one; sampled as the
        sampler says."""
        remote = _client_context(op)
        parent = get_current_span(remote).get_span_context() if remote is not None else None
        if parent is not None and not parent.is_valid:
            remote, parent = None, None
        trace_id = parent.trace_id if parent is not None else self._ids.generate_trace_id()
        # An explicit context: the sampler must not read whatever happens to be current as the parent.
        decision = self._sampler.should_sample(remote or Context(), trace_id, op.method, kind)
        flags = _SAMPLED if decision.decision in _RECORDED else _NOT_SAMPLED
        context = SpanContext(trace_id, self._ids.generate_span_id(), False, flags, decision.trace_state)
        return context, parent

    def operation_finished(self, op: Operation) -> None:
        running: _Running | None = op.notes.get(_KEY)
        if running is None:
            return
        if running.token is not None:
            detach(running.token)
        if not running.context.trace_flags.sampled:
            return
        span = ReadableSpan(
            _name(op.method, op.target),
            running.context,
            running.parent,
            self._resource,
            _attributes(op),
            kind=running.kind,
            status=_ERROR.get(event_outcome(op), _UNSET),
            start_time=running.start_ns,
            end_time=time.time_ns(),
            instrumentation_scope=_SCOPE,
        )
        if self.handed - self.exporter.taken >= self.queue_size:
            self.dropped += 1
            self._full_log.warning(
                "full",
                "traces: %d spans wait for the exporter (OTEL_BSP_MAX_QUEUE_SIZE); %d dropped so far",
                self.queue_size,
                self.dropped,
            )
            return
        self.handed += 1
        self.processor.on_end(span)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Export what is still queued, waiting at most `timeout` seconds; past it the spans are lost (logged)."""
        closing = threading.Thread(target=self.provider.shutdown, name="vmcp-tracing-close", daemon=True)
        closing.start()
        closing.join(timeout)
        if closing.is_alive():
            logger.warning("traces: the collector did not take the last spans within %.0f s; they are lost", timeout)
            self.exporter.shutdown()  # ends its retry back-off; the daemon thread ends with the process


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """The `BatchSpanProcessor`'s settings, from `OTEL_BSP_*` as the SDK reads them, made ones it accepts."""

    max_queue_size: int
    schedule_delay_millis: int
    max_export_batch_size: int
    export_timeout_millis: int


def batch_settings() -> BatchSettings:
    """`OTEL_BSP_*`, each value the SDK would refuse replaced with a warning naming its variable: given its own
    values, the SDK raises (a batch larger than the queue, a zero) and the gateway would not start, for a
    setting that only tunes how spans leave; not an int: the default, where the SDK logs a traceback."""
    queue = _whole("OTEL_BSP_MAX_QUEUE_SIZE", _QUEUE_SIZE, minimum=1, below=_QUEUE_SIZE)
    delay = _whole("OTEL_BSP_SCHEDULE_DELAY", _SCHEDULE_DELAY_MS, minimum=1, below=1)  # 0: as soon as it can
    batch = _whole("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", _BATCH_SIZE, minimum=1, below=_BATCH_SIZE)
    if batch > queue:  # a queue set below the default batch too: the SDK refuses either
        logger.warning(
            "traces: OTEL_BSP_MAX_EXPORT_BATCH_SIZE (%d) is over OTEL_BSP_MAX_QUEUE_SIZE (%d); batches of %d",
            batch,
            queue,
            queue,
        )
        batch = queue
    timeout = _whole("OTEL_BSP_EXPORT_TIMEOUT", _EXPORT_TIMEOUT_MS, minimum=0, below=_EXPORT_TIMEOUT_MS)
    return BatchSettings(queue, delay, batch, timeout)


def _whole(variable: str, default: int, *, minimum: int, below: int) -> int:
    """`variable` as an int; unset: `default`; not an int: `default`, under `minimum`: `below`, each warned about."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        logger.warning("traces: %s=%r is not a whole number; using %d", variable, shorten(raw, 40), default)
        return default
    if value < minimum:
        logger.warning("traces: %s=%d is below %d; using %d", variable, value, minimum, below)
        return below
    return value


def otlp_exporter() -> SpanExporter:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol == "grpc":
        try:  # optional: not among our dependencies
            grpc = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
        except ImportError as exc:
            raise RuntimeError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs `pip install 'vmcp-opt[grpc]'` "
                "(opentelemetry-exporter-otlp-proto-grpc); or use http/protobuf"
            ) from exc
        return cast(SpanExporter, grpc.OTLPSpanExporter())
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _client_context(op: Operation) -> Context | None:
    """The trace context a client sent in its request's `_meta`, if any."""
    meta = op.exchange.meta if op.exchange is not None else None
    if not meta:
        return None
    carrier = {k: v for k, v in dict(meta).items() if k in ("traceparent", "tracestate") and isinstance(v, str)}
    return _PROPAGATOR.extract(carrier) if carrier else None


def _name(method: str, target: str | None) -> str:
    return f"{method} {_shown_target(target)}" if target else method


def _shown_target(target: str) -> str:
    """A target as spans show it: cut (a client chose it), a resource URI's credentials masked as audit does."""
    return masked_target(target[:_MAX_NAME], cut=len(target) > _MAX_NAME)


def _attributes(op: Operation) -> dict[str, Any]:
    """The span's attributes, built once when the operation ends (everything is known then)."""
    caller = op.caller
    attributes: dict[str, Any] = {"mcp.method.name": op.method}
    request = op.kind == "request"
    if request:  # the client's session; a backend request's session and version are the backend's, not these
        attributes["mcp.session.id"] = caller.id[:_MAX_NAME]
        attributes["mcp.protocol.version"] = caller.protocol_version[:_MAX_NAME]
        if op.exchange is not None and op.exchange.request_id is not None:
            attributes["jsonrpc.request.id"] = str(op.exchange.request_id)[:_MAX_NAME]
    if caller.address and op.parent is None:
        attributes["client.address"] = caller.address[:_MAX_NAME]
    target = _shown_target(op.target) if op.target else None
    if target is not None:
        if op.method == "tools/call":
            attributes["gen_ai.tool.name"] = target
            attributes["gen_ai.operation.name"] = "execute_tool"
        elif op.method.startswith("resources/"):
            attributes["mcp.resource.uri"] = target
        elif op.method.startswith("prompts/"):
            attributes["gen_ai.prompt.name"] = target
    if op.backend is not None:
        attributes["vmcp.backend"] = op.backend
    parent = op.parent
    if request and parent is not None and parent.kind == "request" and parent.backend == WORKFLOW_SOURCE:
        attributes["vmcp.workflow.name"] = parent.target or ""
    outcome = event_outcome(op)
    if request or outcome != "success":
        attributes["vmcp.outcome"] = outcome
    if op.error is not None and outcome != INPUT_REQUIRED:  # a question for the client is no error
        attributes["error.type"] = op.error[:_MAX_NAME]
    elif op.outcome == "application_error":
        attributes["error.type"] = "tool_error"
    if request and op.target == "find_tool" and op.backend == GATEWAY_SOURCE:
        attributes |= _find_tool_attributes(op.result)
    return attributes


def _find_tool_attributes(result: Any) -> dict[str, Any]:
    summary = find_tool_summary(result)
    if summary is None:
        return {}
    attributes: dict[str, Any] = {
        "vmcp.find_tool.result_count": summary.results,
        "vmcp.find_tool.ranking": summary.ranking,
    }
    if summary.top_score is not None:
        attributes["vmcp.find_tool.top_score"] = summary.top_score
    if summary.saved_percent is not None:
        attributes["vmcp.find_tool.tokens_saved_percent"] = summary.saved_percent
    return attributes
