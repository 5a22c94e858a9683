"""Spans of the router's operations, read from the SDK's in-memory exporter: names, kinds, parents, MCP
attributes, the trace context from the client's `_meta` to the backend's, sampling, and the state metrics."""

from __future__ import annotations

import types as pytypes

import mcp_types as types
import pytest
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from vmcp_opt.auth import Caller, Identification
from vmcp_opt.config import TracingConfig
from vmcp_opt.routing.exchange import Exchange
from vmcp_opt.routing.operations import Operation, watched
from vmcp_opt.routing.providers import GATEWAY_SOURCE
from vmcp_opt.telemetry.metrics import GatewayState, Metrics
from vmcp_opt.telemetry.tracing import Tracing
from vmcp_opt.workflows.provider import WORKFLOW_SOURCE

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CALLER = Caller("session:ab12", Identification.SESSION, "2025-11-25", address="127.0.0.1")


def traced(ratio: float | None = None) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing(TracingConfig(enabled=True, sample_ratio=ratio), exporter), exporter


def test_call_spans_chain_from_the_clients_traceparent_to_the_backend_request() -> None:
    tracing, exporter = traced()
    meta = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "tracestate": "vendor=1", "progressToken": 3}
    exchange = Exchange("tools/call", request_id=7, meta=meta)  # type: ignore[arg-type]
    front = Operation("tools/call", CALLER, target="notes_save_note", exchange=exchange)
    with watched([tracing], front):
        front.backend = "notes"
        backend = Operation("tools/call", CALLER, "backend", "save_note", "notes", exchange)
        with watched([tracing], backend):
            sent: dict[str, str] = {}
            inject(sent)  # what the MCP SDK's client puts in the backend request's `_meta`
            backend.result = types.CallToolResult(content=[], is_error=True)
            backend.outcome = "application_error"
    tracing.provider.force_flush()
    client, server = exporter.get_finished_spans()

    assert server.name == "tools/call notes_save_note" and server.kind is SpanKind.SERVER
    assert client.name == "tools/call save_note" and client.kind is SpanKind.CLIENT
    assert format(server.context.trace_id, "032x") == CLIENT_TRACE == format(client.context.trace_id, "032x")
    assert server.parent is not None and format(server.parent.span_id, "016x") == CLIENT_SPAN
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    # the backend hears of the CLIENT span, and the client's tracestate goes on with it
    assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{format(client.context.span_id, '016x')}-01"
    assert sent["tracestate"] == "vendor=1"
    after: dict[str, str] = {}
    inject(after)
    assert after == {}  # the backend request's context is current only while it runs

    attributes = dict(server.attributes or {})
    assert attributes["mcp.method.name"] == "tools/call" and attributes["gen_ai.tool.name"] == "notes_save_note"
    assert attributes["mcp.session.id"] == "session:ab12" and attributes["mcp.protocol.version"] == "2025-11-25"
    assert attributes["jsonrpc.request.id"] == "7" and attributes["vmcp.backend"] == "notes"
    assert attributes["vmcp.outcome"] == "success" and "error.type" not in attributes
    assert client.attributes is not None and client.attributes["error.type"] == "tool_error"
    assert client.status.status_code is StatusCode.ERROR


def test_a_failed_request_records_its_error_type_and_a_request_without_context_starts_a_trace() -> None:
    tracing, exporter = traced()
    op = Operation("prompts/get", CALLER, target="summary", exchange=Exchange("prompts/get"))
    with pytest.raises(TimeoutError), watched([tracing], op):
        raise TimeoutError
    tracing.close()
    (span,) = exporter.get_finished_spans()
    assert span.parent is None and span.kind is SpanKind.SERVER and span.name == "prompts/get summary"
    assert span.attributes is not None and span.attributes["error.type"] == "TimeoutError"
    assert span.attributes["gen_ai.prompt.name"] == "summary"


def test_find_tool_and_workflow_steps_have_their_own_attributes() -> None:
    tracing, exporter = traced()
    answer = {
        "ranking": "hybrid",
        "tools": [{"name": "a", "score": 0.8}, {"name": "b", "score": 0.5}],
        "tokens": {"full_tool_list": 1000, "this_answer": 100, "saved": 900},
    }
    find = Operation("tools/call", CALLER, target="find_tool", backend=GATEWAY_SOURCE)
    with watched([tracing], find):
        find.result = types.CallToolResult(content=[], structured_content=answer)
    workflow = Operation("tools/call", CALLER, target="triage", backend=WORKFLOW_SOURCE)
    step_op = Operation("tools/call", CALLER, target="notes_list", backend="notes")
    with watched([tracing], workflow), watched([tracing], step_op):
        pass
    tracing.close()
    found, step, run = exporter.get_finished_spans()
    assert found.attributes is not None and found.attributes["vmcp.find_tool.result_count"] == 2
    assert found.attributes["vmcp.find_tool.ranking"] == "hybrid"
    assert found.attributes["vmcp.find_tool.top_score"] == 0.8
    assert found.attributes["vmcp.find_tool.tokens_saved_percent"] == 90.0
    assert step.kind is SpanKind.INTERNAL and step.parent is not None and step.parent.span_id == run.context.span_id
    assert step.attributes is not None and step.attributes["vmcp.workflow.name"] == "triage"


def test_sample_ratio_zero_records_nothing_but_still_passes_the_context_on() -> None:
    tracing, exporter = traced(0.0)
    op = Operation("tools/call", CALLER, "backend", "save_note", "notes")
    sent: dict[str, str] = {}
    with watched([tracing], op):
        inject(sent)
    tracing.close()
    assert exporter.get_finished_spans() == ()
    assert int(sent["traceparent"][-2:], 16) & 1 == 0  # not sampled, said so to the backend


def test_state_metrics_are_read_at_scrape_time() -> None:
    metrics = Metrics(["notes"])
    audit = pytypes.SimpleNamespace(written=5, dropped=2, write_failures=1, waits_run_out=0)
    metrics.state = GatewayState(
        backends=lambda: [("notes", "healthy", "open")],
        sessions=lambda: 3,
        index_size=lambda: 42,
        audit=audit,  # type: ignore[arg-type]
    )
    answer = {"ranking": "keyword", "tools": [{"score": 1.0}], "tokens": {"full_tool_list": 200, "saved": 150}}
    find = Operation("tools/call", CALLER, target="find_tool", backend=GATEWAY_SOURCE)
    find.result = types.CallToolResult(content=[], structured_content=answer)
    metrics.operation_finished(find)
    text = metrics.exposition().decode()
    assert 'vmcp_backend_health{backend="notes",state="healthy"} 1.0' in text
    assert 'vmcp_backend_health{backend="notes",state="unhealthy"} 0.0' in text
    assert 'vmcp_backend_circuit{backend="notes",state="open"} 1.0' in text
    assert "vmcp_active_sessions 3.0" in text and "vmcp_index_tools 42.0" in text
    assert "vmcp_audit_events_dropped_total 2.0" in text and "vmcp_audit_write_failures_total 1.0" in text
    assert 'vmcp_find_tool_results_count{ranking="keyword"} 1.0' in text
    assert 'vmcp_find_tool_token_savings_percent_bucket{le="80.0"} 1.0' in text
    assert 'vmcp_find_tool_token_savings_percent_bucket{le="70.0"} 0.0' in text
    assert "vmcp_find_tool_tokens_saved_total 150.0" in text


def test_shutdown_does_not_wait_on_a_collector_that_never_answers() -> None:
    """A real OTLP/HTTP exporter against a socket that accepts and never answers: the exporter would hold the
    shutdown for its whole timeout (set to two minutes here); `close` gives up after its own bound."""
    import socket
    import threading

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen()
        endpoint = f"http://127.0.0.1:{hole.getsockname()[1]}/v1/traces"
        tracing = Tracing(TracingConfig(enabled=True), OTLPSpanExporter(endpoint=endpoint, timeout=120))
        with watched([tracing], Operation("tools/call", CALLER, target="t")):
            pass
        closing = threading.Thread(target=tracing.close, kwargs={"timeout": 0.5}, daemon=True)
        closing.start()
        closing.join(60)  # far less than the exporter's 120 s; without the bound, `close` is still waiting
        assert not closing.is_alive()
