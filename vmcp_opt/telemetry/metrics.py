"""Prometheus metrics from the router's operations, in a registry of the gateway's own.

Labels are a fixed vocabulary or come from the config: `method` (the MCP methods, else "other"),
`outcome` (four values), `backend` (configured backend names); never a tool name, argument or anything else
a client controls, so the number of series cannot grow with traffic.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from vmcp_opt.routing.operations import Operation
from vmcp_opt.telemetry.names import META_TOOLS, method_label

CONTENT_TYPE = CONTENT_TYPE_LATEST
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """An `OperationWatcher` counting and timing requests, backend calls and find_tool."""

    def __init__(self, backends: list[str]) -> None:
        self.registry = CollectorRegistry()
        self._backends = frozenset(backends)
        self.server = Histogram(
            "mcp_server_operation_duration_seconds",
            "Requests served, by MCP method and outcome (mcp.server.operation.duration).",
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

    def operation_started(self, op: Operation) -> None:
        return None

    def operation_finished(self, op: Operation) -> None:
        if op.kind == "backend":
            backend = op.backend if op.backend in self._backends else "other"
            self.client.labels(backend, method_label(op.method), op.outcome).observe(op.duration)
            return
        self.server.labels(method_label(op.method), op.outcome).observe(op.duration)
        if op.method == "tools/call" and op.target in META_TOOLS and op.backend == "vmcp":
            self.meta.labels(op.target, op.outcome).observe(op.duration)
        if op.error == str(-32602) and op.backend is None:
            self.not_found.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
