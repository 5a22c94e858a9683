"""OpenTelemetry traces of the router's operations, with the MCP semantic conventions.

One span per operation (routing/operations.py):

    SERVER   "tools/call notes_save_note"   a client's request (named "{mcp.method.name} {target}")
    INTERNAL "tools/call notes_save_note"   a request made inside another: call_tool's target, a workflow step
    CLIENT   "tools/call save_note"         each request sent to a backend, under the request it serves

A client's W3C trace context (`traceparent`, `tracestate` in the request's `_meta`) is the parent of the
SERVER span, and the CLIENT span's context goes to the backend in the backend request's `_meta` (the router
merges `Operation.meta` into it), so one trace runs client → gateway → backend. Each span is also the current
OpenTelemetry context while its operation runs: the MCP SDK's client injects that context into every
outbound `_meta` itself, and would otherwise send the client's own.

Attributes are the MCP and GenAI conventions' (`mcp.method.name`, `mcp.session.id`, `mcp.protocol.version`,
`jsonrpc.request.id`, `gen_ai.tool.name`, `error.type`) and ours under `vmcp.` (backend, outcome, find_tool's
result count, ranking mode and top score, a step's workflow). `mcp.session.id` is the caller id (a digest
for sessions and credentials), never a raw session id; no arguments or results are recorded.

The tracer provider is the gateway's own (not the global one). Spans leave in batches from the SDK's thread
to the OTLP exporter, which reads the standard `OTEL_EXPORTER_OTLP_*` variables; `OTEL_EXPORTER_OTLP_PROTOCOL`
`grpc` needs `opentelemetry-exporter-otlp-proto-grpc` installed.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, cast

from opentelemetry.context import Context, attach, detach
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from vmcp_opt.config import TracingConfig
from vmcp_opt.routing.operations import Operation
from vmcp_opt.routing.providers import GATEWAY_SOURCE
from vmcp_opt.telemetry.names import find_tool_summary
from vmcp_opt.workflows.provider import WORKFLOW_SOURCE

_KEY = "span"  # this watcher's entries in `Operation.notes`
_TOKEN = "otel_context"
_MAX_NAME = 200  # a client names the target: span names and attributes keep this much of it
_PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    """An `OperationWatcher` opening a span at each operation's start and ending it at its finish."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        sampler = ParentBased(TraceIdRatioBased(config.sample_ratio)) if config.sample_ratio is not None else None
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "vmcp-opt"})
        self.provider = TracerProvider(sampler=sampler, resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter or otlp_exporter()))
        self.tracer = self.provider.get_tracer("vmcp_opt.telemetry.tracing")

    def operation_started(self, op: Operation) -> None:
        parent = op.parent.notes.get(_KEY) if op.parent is not None else None
        nested = SpanKind.SERVER if parent is None else SpanKind.INTERNAL
        kind = SpanKind.CLIENT if op.kind == "backend" else nested
        context = set_span_in_context(parent) if parent is not None else _client_context(op)
        # Attributes given at the start are cleaned once (setting them later costs as much again).
        span = self.tracer.start_span(
            _name(op.method, op.target), context=context, kind=kind, attributes=_start_attributes(op)
        )
        op.notes[_KEY] = span
        # The span is also OpenTelemetry's current one while the operation runs: the MCP SDK's client injects
        # the current context into every request's `_meta` (over ours), and instrumented libraries nest here.
        op.notes[_TOKEN] = attach(set_span_in_context(span))
        if op.kind == "backend":
            op.meta.update(_trace_context(span))

    def operation_finished(self, op: Operation) -> None:
        span: Span | None = op.notes.get(_KEY)
        if span is None:
            return
        detach(op.notes.pop(_TOKEN))
        if span.is_recording():
            attributes = _finish_attributes(op)
            if attributes:
                span.set_attributes(attributes)
            if op.outcome != "success":
                span.set_status(Status(StatusCode.ERROR, op.outcome))
        span.end()

    def close(self) -> None:
        self.provider.shutdown()  # exports what is still queued


def otlp_exporter() -> SpanExporter:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol == "grpc":
        try:  # optional: not among our dependencies
            grpc = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
        except ImportError as exc:
            raise RuntimeError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs `pip install opentelemetry-exporter-otlp-proto-grpc`; "
                "or use http/protobuf"
            ) from exc
        return cast(SpanExporter, grpc.OTLPSpanExporter())
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _trace_context(span: Span) -> dict[str, str]:
    """W3C `traceparent` (and `tracestate`) of `span`: what TraceContextTextMapPropagator.inject writes, at a
    fraction of its cost (no validation of what our own SDK made)."""
    context = span.get_span_context()
    meta = {"traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"}
    if context.trace_state:
        meta["tracestate"] = context.trace_state.to_header()
    return meta


def _client_context(op: Operation) -> Context | None:
    """The trace context a client sent in its request's `_meta`, if any."""
    meta = op.exchange.meta if op.exchange is not None else None
    if not meta:
        return None
    carrier = {k: v for k, v in dict(meta).items() if k in ("traceparent", "tracestate") and isinstance(v, str)}
    return _PROPAGATOR.extract(carrier) if carrier else None


def _name(method: str, target: str | None) -> str:
    return f"{method} {target[:_MAX_NAME]}" if target else method


def _start_attributes(op: Operation) -> dict[str, Any]:
    caller = op.caller
    attributes: dict[str, Any] = {
        "mcp.method.name": op.method,
        "mcp.session.id": caller.id,
        "mcp.protocol.version": caller.protocol_version,
    }
    if op.kind == "request" and op.exchange is not None and op.exchange.request_id is not None:
        attributes["jsonrpc.request.id"] = str(op.exchange.request_id)
    if caller.address and op.parent is None:
        attributes["client.address"] = caller.address
    target = op.target[:_MAX_NAME] if op.target else None
    if target is not None:
        if op.method == "tools/call":
            attributes |= {"gen_ai.tool.name": target, "gen_ai.operation.name": "execute_tool"}
        elif op.method.startswith("resources/"):
            attributes["mcp.resource.uri"] = target
        elif op.method.startswith("prompts/"):
            attributes["gen_ai.prompt.name"] = target
    if op.backend is not None:
        attributes["vmcp.backend"] = op.backend
    parent = op.parent
    if parent is not None and parent.kind == "request" and parent.backend == WORKFLOW_SOURCE and op.kind == "request":
        attributes["vmcp.workflow.name"] = parent.target or ""
    return attributes


def _finish_attributes(op: Operation) -> dict[str, Any]:
    """What became known while the operation ran (each attribute set costs the SDK a cleaning pass)."""
    attributes: dict[str, Any] = {}
    if op.kind == "request" or op.outcome != "success":
        attributes["vmcp.outcome"] = op.outcome
    if op.kind == "request" and op.backend is not None:
        attributes["vmcp.backend"] = op.backend  # known once the target is looked up
    if op.error is not None:
        attributes["error.type"] = op.error
    elif op.outcome == "application_error":
        attributes["error.type"] = "tool_error"
    if op.kind == "request" and op.target == "find_tool" and op.backend == GATEWAY_SOURCE:
        summary = find_tool_summary(op.result)
        if summary is not None:
            attributes["vmcp.find_tool.result_count"] = summary.results
            attributes["vmcp.find_tool.ranking"] = summary.ranking
            if summary.top_score is not None:
                attributes["vmcp.find_tool.top_score"] = summary.top_score
            if summary.saved_percent is not None:
                attributes["vmcp.find_tool.tokens_saved_percent"] = summary.saved_percent
    return attributes
