"""What the gateway records: the audit log and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from vmcp_opt.config.base import _Strict
from vmcp_opt.config.suggestions import closest

# Every audit event type (vmcp_opt/telemetry/names.py makes them; a test keeps the two in step): ToolHive's
# where they exist, ours (`vmcp_*`, `workflow_*`) for the meta-tools, workflows and refused authentications.
AUDIT_EVENT_TYPES = frozenset(
    {
        "mcp_initialize",
        "mcp_tools_list",
        "mcp_prompts_list",
        "mcp_resources_list",
        "mcp_resource_templates_list",
        "mcp_prompt_get",
        "mcp_resource_read",
        "mcp_completion",
        "mcp_logging",
        "mcp_request",
        "mcp_tool_call",
        "vmcp_find_tool",
        "vmcp_call_tool",
        "vmcp_auth_denied",
        "vmcp_rate_limited",
        "vmcp_session_refused",
        "workflow_started",
        "workflow_completed",
        "workflow_failed",
        "workflow_timed_out",
        "workflow_step_started",
        "workflow_step_skipped",
        "workflow_step_completed",
        "workflow_step_failed",
    }
)


class AuditConfig(_Strict):
    """One JSON object per line per MCP operation (vmcp_opt/telemetry/audit.py); field names as ToolHive's."""

    # Write audit events.
    enabled: bool = False
    # `stdout`, `stderr`, or a file (relative to the config file's directory, created 0600) rotated at
    # `max_file_bytes`. Not `stdout` with `server.transport: stdio` (`--stdio`): that is the MCP stream.
    output: str = "stdout"
    # Size at which the file is rotated; no line is longer (a longer event loses its `data`, then more).
    max_file_bytes: int = Field(default=50_000_000, ge=1024)
    # Rotated files kept beside the current one (`audit.log.1` … `audit.log.N`).
    backups: int = Field(default=5, ge=0)
    # Event types to write (`mcp_tool_call`, `mcp_tools_list`, `vmcp_find_tool`, `workflow_started`, …); empty: all.
    include: list[str] = Field(default_factory=list)
    # Event types never written (applied after `include`).
    exclude: list[str] = Field(default_factory=list)
    # Request arguments and results in `data`: off, as they may hold personal data; when on, keys that look
    # secret are redacted and each part is cut to `max_data_bytes`.
    include_data: bool = False
    # Bytes of JSON kept of each of the request and the response; longer is cut and marked `truncated`.
    max_data_bytes: int = Field(default=4096, ge=64)
    # With `include_data`: bytes of arguments and results (JSON) all events waiting for the writer may hold; an
    # event past it is written without `data`, marked `data_dropped` (a stalled output must not cost memory).
    max_queued_data_bytes: int = Field(default=64_000_000, ge=0)
    # Events waiting for the writer thread. Full: `drop` (counted and reported) or `block` the request for
    # at most `block_timeout` seconds, then drop.
    queue_size: int = Field(default=10_000, ge=1)
    # What a request does when the queue is full: `drop` the event at once, or `block` first.
    when_full: Literal["drop", "block"] = "drop"
    # Seconds a request waits for room under `when_full: block` before the event is dropped. The wait holds the
    # event loop (every session), so once one runs out events are dropped at once until the writer moves again.
    block_timeout: float = Field(default=0.05, ge=0, le=1)
    # Seconds the writer gathers events before it formats and writes them: one wake-up per batch keeps its
    # work from interleaving with requests; 0 writes each event at once.
    flush_interval: float = Field(default=0.1, ge=0, le=10)

    @field_validator("include", "exclude")
    @classmethod
    def _known_event_types(cls, value: list[str]) -> list[str]:
        problems = [_unknown_event_type(name) for name in value if name not in AUDIT_EVENT_TYPES]
        if problems:
            raise ValueError("; ".join(problems) + f" (known: {', '.join(sorted(AUDIT_EVENT_TYPES))})")
        return value


def _unknown_event_type(name: str) -> str:
    close = closest(name, AUDIT_EVENT_TYPES, cutoff=0.6)
    return f"unknown event type {name!r}" + (f", did you mean {close[0]!r}?" if close else "")


class MetricsConfig(_Strict):
    """Prometheus metrics (vmcp_opt/telemetry/metrics.py)."""

    # Count and time requests, backend calls, find_tool; serve them for Prometheus.
    enabled: bool = False
    # A separate diagnostics listener serving `/metrics`, `/healthz` and `/readyz` (over stdio too):
    # `port` or `host:port` (`[::1]:port` for IPv6), loopback unless a host is named. Unset: `/metrics` is
    # served on the main HTTP listener.
    listen: str | None = None

    @field_validator("listen", mode="before")
    @classmethod
    def _port_number(cls, value: Any) -> Any:
        # YAML reads `listen: 9464` as an integer: the bare port the comment above allows.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is not None:
            listen_address(value)  # raises with the reason
        return value

    @model_validator(mode="after")
    def _listen_needs_metrics(self) -> MetricsConfig:
        if self.listen is not None and not self.enabled:
            raise ValueError("`listen` needs `enabled: true`")
        return self

    def address(self) -> tuple[str, int] | None:
        """The diagnostics listener's host and port, if one is configured."""
        return listen_address(self.listen) if self.listen is not None else None


def listen_address(value: str) -> tuple[str, int]:
    """`9464`, `:9464`, `0.0.0.0:9464`, `[::1]:9464` → (host, port); a bare port is on loopback."""
    host, _, port = value.strip().rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected `port` or `host:port` with a port from 1 to 65535, got {value!r}")
    return host, int(port)


class TracingConfig(_Strict):
    """OpenTelemetry traces (vmcp_opt/telemetry/tracing.py), exported over OTLP as the standard `OTEL_*`
    environment variables say (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, …)."""

    # A span per request and per backend call; W3C trace context from the client's `_meta` to the backends'.
    enabled: bool = False
    # Share of new traces recorded (0 to 1; a client's sampled flag is followed). None: `OTEL_TRACES_SAMPLER`
    # and `OTEL_TRACES_SAMPLER_ARG` decide, and without them every trace is recorded.
    sample_ratio: float | None = Field(default=None, ge=0, le=1)


class TelemetryConfig(_Strict):
    """What the gateway did, for operators: audit log, metrics and traces. All off by default."""

    # One JSON line per MCP operation.
    audit: AuditConfig = Field(default_factory=AuditConfig)
    # Prometheus metrics at `/metrics`, on the main listener or a diagnostics listener of their own.
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    # OpenTelemetry spans, exported over OTLP.
    tracing: TracingConfig = Field(default_factory=TracingConfig)


def telemetry_problems(telemetry: TelemetryConfig, *, transport: str, host: str, port: int, base_dir: str) -> list[str]:
    """What cannot work with the rest of the document: audit on the MCP stream, an audit file that can never be
    written, the diagnostics listener on the MCP port."""
    problems: list[str] = []
    audit = telemetry.audit
    if audit.enabled and audit.output == "stdout" and transport == "stdio":
        problems.append(
            "telemetry.audit.output: stdout is the MCP stream under --stdio (server.transport: stdio), where "
            "audit lines would corrupt the protocol; set it to a file (e.g. audit.log) or stderr"
        )
    if audit.enabled and audit.output not in ("stdout", "stderr"):
        problem = audit_output_problem(audit_output_path(audit.output, base_dir))
        if problem:
            problems.append(f"telemetry.audit.output: {problem}")
    address = telemetry.metrics.address()
    if address is not None and transport == "streamable-http" and _same_listener(address, (host, port)):
        problems.append(
            f"telemetry.metrics.listen: port {port} is server.port, the MCP listener's; choose another port for "
            "the diagnostics listener, or unset `listen` to serve /metrics on the MCP listener"
        )
    return problems


def _same_listener(diagnostics: tuple[str, int], main: tuple[str, int]) -> bool:
    """Whether the two addresses would clash: the same port, on the same host or a wildcard."""
    hosts = {diagnostics[0], main[0]}
    return diagnostics[1] == main[1] and (len(hosts) == 1 or bool(hosts & {"0.0.0.0", "::", ""}))


def audit_output_path(output: str, base_dir: str) -> Path:
    """The audit file `output` names: relative to the config file's directory."""
    path = Path(output)
    return path if path.is_absolute() else Path(base_dir) / path


def audit_output_problem(path: Path) -> str | None:
    """Why `path` can never be an audit file (a directory, or under a file), or None. Permissions are left to
    the start, which opens the file: they may differ where `vmcp validate` runs."""
    if path.is_dir():
        return f"{path} is a directory; name a file in it (e.g. {path / 'audit.log'})"
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"cannot create {path}: {parent} is a file, not a directory"
    return None
