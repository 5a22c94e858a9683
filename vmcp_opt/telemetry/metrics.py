"""Prometheus metrics from the router's operations, in a registry of the gateway's own.

Labels are a fixed vocabulary or come from the config: `method` (the MCP methods, else "other"),
`outcome` (the operations' five, and `input_required` for a 2026-07-28 request answered with a question, as the
audit log states it: names.py `event_outcome`), `backend` (configured backend names), `setting` (the configured
rate limits), `state` (the health and circuit states), `ranking` (the index's two modes), `stage` and `vectors`
(index updates), auth `method` and `outcome`, a refused session's `reason` (three values), a backend message's
`kind` (`BACKEND_MESSAGE_KINDS`); never a tool name, argument or anything else a client controls, so the number
of series cannot grow with traffic.

Counted as operations finish: requests (those clients sent: call_tool's target and a workflow's steps are
part of theirs), backend requests, meta-tool calls, unknown tools, find_tool's
result counts and token savings. Counted when told: HTTP authentication outcomes (the transport), tool calls
refused by a rate limit before the router (the HTTP gate, through the gateway), HTTP requests refused before
a session served them (another principal's session named, a session limit reached), and index
updates with their duration and embedded and reused tools (the optimizer's index, through the gateway).
Read at each scrape from the gateway (`Metrics.state`, a `GatewayState` the gateway fills): each backend's
health and circuit state and the messages it sent by kind, active sessions, the index size, what the limits
bound (requests in flight, answer bytes held unread, streams open), and the
audit log's written, dropped and failed events, the calls let through with rate limits unchecked, and the spans
dropped before the trace exporter's queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from vmcp_opt.routing.operations import Operation
from vmcp_opt.telemetry.audit import AuditLog
from vmcp_opt.telemetry.names import META_TOOLS, event_outcome, find_tool_summary, method_label

CONTENT_TYPE = CONTENT_TYPE_LATEST
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_RESULT_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)
_PERCENT_BUCKETS = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 100)
_REBUILD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Authentication outcomes: accepted, or the RFC 6750 error a refusal was answered with.
AUTH_OUTCOMES = frozenset(
    {"accepted", "missing", "invalid_token", "invalid_request", "insufficient_scope", "temporarily_unavailable"}
)
AUTH_METHODS = frozenset({"oauth", "api_keys"})
# Why an HTTP request was refused before a session served it (`Telemetry.session_refused`).
SESSION_REFUSALS = frozenset(
    {"session_owner", "limits.max_sessions_per_address", "limits.max_sessions_per_caller", "limits.max_sessions"}
)
HEALTH_STATES = ("unknown", "healthy", "degraded", "unhealthy")
CIRCUIT_STATES = ("closed", "open", "half_open", "disabled")
RANKINGS = frozenset({"hybrid", "keyword"})
# The kinds of message a backend sends, as its connection counts them (backends/inbound.py `message_kind`).
BACKEND_MESSAGE_KINDS = frozenset(
    {"log", "progress", "resource_updated", "list_changed", "notification", "request", "response"}
)


@dataclass
class GatewayState:
    """What a scrape reads from the gateway; each part optional (a transport without sessions, no optimizer)."""

    # (backend, health state, circuit state) for each configured backend.
    backends: Callable[[], Iterable[tuple[str, str, str]]] = lambda: ()
    sessions: Callable[[], int] | None = None
    index_size: Callable[[], int] | None = None
    audit: AuditLog | None = None
    # Calls let through unchecked because the rate-limit store could not be asked (shared/rate_limits.py).
    rate_limits_unchecked: Callable[[], int] | None = None
    # Spans dropped before the trace exporter's queue (telemetry/tracing.py); None: tracing is off.
    spans_dropped: Callable[[], int] | None = None
    # What the limits (`limits.*`) hold now, over HTTP: requests running, bytes of answers clients leave unread,
    # GET and listen streams open. An operator watches them near their bounds; None: not served (stdio).
    requests_in_flight: Callable[[], int] | None = None
    held_answer_bytes: Callable[[], int] | None = None
    streams_open: Callable[[], int] | None = None
    # (backend, kind, messages received so far) for each backend's shared session (backends/inbound.py
    # `InboundMessages`): a backend flooding the gateway with valid messages costs its loop without failing.
    backend_messages: Callable[[], Iterable[tuple[str, str, int]]] | None = None


class Metrics:
    """An `OperationWatcher` counting and timing requests, backend calls and find_tool."""

    def __init__(self, backends: list[str], rate_limit_settings: frozenset[str] = frozenset()) -> None:
        # A `_created` gauge beside every counter and histogram doubled the series a scrape stores, for a
        # start time that Prometheus, reading the text format, does not use.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.backends = frozenset(backends)
        self._rate_limit_settings = rate_limit_settings
        self.server = Histogram(
            "mcp_server_operation_duration_seconds",
            "Requests clients sent, by MCP method and outcome (mcp.server.operation.duration); call_tool's "
            "target and workflow steps are part of their request, not requests of their own.",
            ["method", "outcome"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.client = Histogram(
            "mcp_client_operation_duration_seconds",
            "Requests sent to backends, by backend, MCP method and outcome (mcp.client.operation.duration).",
            ["backend", "method", "outcome"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.meta = Histogram(
            "vmcp_meta_tool_duration_seconds",
            "find_tool and call_tool calls, by meta-tool and outcome.",
            ["tool", "outcome"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.not_found = Counter(
            "vmcp_unknown_tool_total", "Calls of a tool nothing serves (call_tool not-found).", registry=self.registry
        )
        self.unknown_prompt = Counter(
            "vmcp_unknown_prompt_total", "prompts/get of a prompt nothing serves.", registry=self.registry
        )
        self.find_results = Histogram(
            "vmcp_find_tool_results",
            "Tools find_tool returned per call, by ranking mode (hybrid, or keyword while vectors load).",
            ["ranking"],
            buckets=_RESULT_BUCKETS,
            registry=self.registry,
        )
        self.token_savings = Histogram(
            "vmcp_find_tool_token_savings_percent",
            "Tokens a find_tool answer saved against the full tools/list, in percent (0-100).",
            buckets=_PERCENT_BUCKETS,
            registry=self.registry,
        )
        self.tokens_saved = Counter(
            "vmcp_find_tool_tokens_saved_total",
            "Tokens find_tool answers saved against the full tools/list, summed.",
            registry=self.registry,
        )
        self.auth = Counter(
            "vmcp_auth",
            "HTTP requests authenticated, by configured method (oauth, api_keys) and outcome: accepted, or the "
            "reason refused (missing, invalid_token, invalid_request, insufficient_scope, temporarily_unavailable).",
            ["method", "outcome"],
            registry=self.registry,
        )
        self.rate_limited_calls = Counter(
            "vmcp_rate_limited",
            "Tool calls and forwarded requests (resources/read, prompts/get, completion/complete, resources/subscribe) "
            "refused by a rate limit (over HTTP a 429 before the router; over stdio, and a call made "
            "inside another, by the router), by the setting whose bucket was empty (rate_limits.per_caller, "
            "rate_limits.shared, rate_limits.per_tool.<tool>).",
            ["setting"],
            registry=self.registry,
        )
        self.sessions_refused = Counter(
            "vmcp_sessions_refused",
            "HTTP requests refused before a session served them, by reason: session_owner (it named a session "
            "another principal opened; answered 404, as a missing one), limits.max_sessions_per_address (429), "
            "limits.max_sessions (503).",
            ["reason"],
            registry=self.registry,
        )
        self.index_rebuild = Histogram(
            "vmcp_index_rebuild_seconds",
            "find_tool index updates, by stage: keywords (at once on a catalogue change) or vectors (the model).",
            ["stage"],
            buckets=_REBUILD_BUCKETS,
            registry=self.registry,
        )
        self.index_tools = Counter(
            "vmcp_index_update_tools",
            "Tools per index update, by stage and how their vector was had: embedded by the model, or reused.",
            ["stage", "vectors"],
            registry=self.registry,
        )
        self.state = GatewayState()
        self.registry.register(_StateCollector(self))
        # Each label set's child, looked up once: `labels()` takes a lock and formats every value each time.
        self._children: dict[tuple[Histogram | Counter, tuple[str, ...]], Any] = {}

    def _child(self, metric: Histogram | Counter, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:  # label values are bounded (module docstring), so this dictionary is too
            child = self._children[key] = metric.labels(*labels)
        return child

    def operation_started(self, op: Operation) -> None:
        return None

    def operation_finished(self, op: Operation) -> None:
        # As the audit log states it: a request answered with a question (2026-07-28) is no success yet.
        outcome = event_outcome(op)
        if op.kind == "backend":
            backend = op.backend if op.backend in self.backends else "other"
            self._child(self.client, backend, method_label(op.method), outcome).observe(op.duration)
            return
        if op.parent is None:
            # Only what a client sent: call_tool's target and a workflow's steps run inside a request, and
            # counted again they would make one call_tool two requests served, and a typo in its `tool_name`
            # a failed request the client never received (call_tool answers it with isError).
            self._child(self.server, method_label(op.method), outcome).observe(op.duration)
        if op.method == "tools/call" and op.target in META_TOOLS and op.backend == "vmcp":
            self._child(self.meta, op.target, outcome).observe(op.duration)
            if op.target == "find_tool":
                self._found(op)
        if op.error == str(-32602) and op.backend is None:  # not found: served by no backend
            if op.method == "tools/call":
                self.not_found.inc()
            elif op.method == "prompts/get":
                self.unknown_prompt.inc()

    def authenticated(self, method: str, outcome: str) -> None:
        """One HTTP request's authentication (server/authentication.py)."""
        method = method if method in AUTH_METHODS else "other"
        self._child(self.auth, method, outcome if outcome in AUTH_OUTCOMES else "other").inc()

    def rate_limited(self, setting: str) -> None:
        """A tool call refused by a rate limit: at the HTTP gate (server/rate_limit_gate.py) or by the router."""
        label = setting if setting in self._rate_limit_settings else "other"
        self._child(self.rate_limited_calls, label).inc()

    def session_refused(self, reason: str) -> None:
        """An HTTP request refused before a session served it (server/shared_sessions.py, server/sessions.py)."""
        self._child(self.sessions_refused, reason if reason in SESSION_REFUSALS else "other").inc()

    def index_updated(self, stage: str, seconds: float, embedded: int, reused: int) -> None:
        """find_tool's index finished an update (optimizer/index.py; called on the updating thread)."""
        self.index_rebuild.labels(stage).observe(seconds)
        self.index_tools.labels(stage, "embedded").inc(embedded)
        self.index_tools.labels(stage, "reused").inc(reused)

    def _found(self, op: Operation) -> None:
        summary = find_tool_summary(op.result)
        if summary is None:
            return
        self.find_results.labels(summary.ranking if summary.ranking in RANKINGS else "other").observe(summary.results)
        if summary.saved_percent is not None:
            self.token_savings.observe(summary.saved_percent)
        self.tokens_saved.inc(summary.tokens_saved)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges read from the gateway at scrape time, so nothing on the request path keeps them up to date."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        state = self.metrics.state
        health = GaugeMetricFamily(
            "vmcp_backend_health", "1 for each backend's current health state.", labels=["backend", "state"]
        )
        circuit = GaugeMetricFamily(
            "vmcp_backend_circuit", "1 for each backend's current circuit breaker state.", labels=["backend", "state"]
        )
        for backend, health_state, circuit_state in state.backends():
            for value in HEALTH_STATES:
                health.add_metric([backend, value], 1.0 if value == health_state else 0.0)
            for value in CIRCUIT_STATES:
                circuit.add_metric([backend, value], 1.0 if value == circuit_state else 0.0)
        yield health
        yield circuit
        if state.sessions is not None:
            yield GaugeMetricFamily("vmcp_active_sessions", "Client sessions open now.", value=state.sessions())
        if state.index_size is not None:
            yield GaugeMetricFamily("vmcp_index_tools", "Tools in find_tool's index.", value=state.index_size())
        yield from _held_now(state)
        if state.backend_messages is not None:
            yield self._backend_messages(state.backend_messages())
        if state.rate_limits_unchecked is not None:
            yield CounterMetricFamily(
                "vmcp_rate_limits_unchecked",
                "Tool calls let through with rate limits unchecked: the store (Redis) could not be asked.",
                value=state.rate_limits_unchecked(),
            )
        if state.spans_dropped is not None:
            yield CounterMetricFamily(
                "vmcp_trace_spans_dropped",
                "Spans dropped: OTEL_BSP_MAX_QUEUE_SIZE of them were waiting for the trace exporter.",
                value=state.spans_dropped(),
            )
        audit = state.audit
        if audit is not None:
            yield CounterMetricFamily("vmcp_audit_events_written", "Audit events written.", value=audit.written)
            yield CounterMetricFamily(
                "vmcp_audit_events_dropped", "Audit events dropped: the queue was full.", value=audit.dropped
            )
            yield CounterMetricFamily(
                "vmcp_audit_block_waits_run_out",
                "Times an audit event waited telemetry.audit.block_timeout for room and was dropped (when_full:"
                " block): each held the event loop that long.",
                value=audit.waits_run_out,
            )
            yield CounterMetricFamily(
                "vmcp_audit_write_failures",
                "Audit events lost to a failed write or an unserialisable result.",
                value=audit.write_failures,
            )

    def _backend_messages(self, counts: Iterable[tuple[str, str, int]]) -> Metric:
        family = CounterMetricFamily(
            "vmcp_backend_messages",
            "Messages received from each backend (its shared session), by kind: log, progress, resource_updated, "
            "list_changed, notification (any other), request, response.",
            labels=["backend", "kind"],
        )
        summed: dict[tuple[str, str], int] = {}
        for backend, kind, count in counts:  # label values bounded: configured backends, a fixed set of kinds
            key = (
                backend if backend in self.metrics.backends else "other",
                kind if kind in BACKEND_MESSAGE_KINDS else "other",
            )
            summed[key] = summed.get(key, 0) + count
        for (backend, kind), count in summed.items():
            family.add_metric([backend, kind], count)
        return family


def _held_now(state: GatewayState) -> Iterator[Metric]:
    """The gauges of what the limits bound (`limits.requests_in_flight`, `limits.held_answer_bytes`, the streams
    per caller): how close the gateway is to refusing."""
    gauges = (
        ("vmcp_requests_in_flight", "Requests running now (limits.requests_in_flight).", state.requests_in_flight),
        (
            "vmcp_held_answer_bytes",
            "Bytes of answers the gateway holds that clients have not read yet (limits.held_answer_bytes).",
            state.held_answer_bytes,
        ),
        ("vmcp_streams_open", "GET event streams and listen streams open now.", state.streams_open),
    )
    for name, documentation, read in gauges:
        if read is not None:
            yield GaugeMetricFamily(name, documentation, value=read())
