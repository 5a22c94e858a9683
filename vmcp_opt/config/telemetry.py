"""What the gateway records: the audit log and metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from vmcp_opt.config.base import _Strict


class AuditConfig(_Strict):
    """One JSON object per line per MCP operation (vmcp_opt/telemetry/audit.py); field names as ToolHive's."""

    # Write audit events.
    enabled: bool = False
    # `stdout`, or a file (relative to the config file's directory) rotated at `max_file_bytes`.
    output: str = "stdout"
    # Size at which the file is rotated.
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
    # Events waiting for the writer thread. Full: `drop` (counted and reported) or `block` the request for
    # at most `block_timeout` seconds, then drop.
    queue_size: int = Field(default=10_000, ge=1)
    # What a request does when the queue is full: `drop` the event at once, or `block` first.
    when_full: Literal["drop", "block"] = "drop"
    # Seconds a request waits for room under `when_full: block` before the event is dropped.
    block_timeout: float = Field(default=0.05, ge=0)
    # Seconds the writer gathers events before it formats and writes them: one wake-up per batch keeps its
    # work from interleaving with requests; 0 writes each event at once.
    flush_interval: float = Field(default=0.1, ge=0, le=10)


class MetricsConfig(_Strict):
    """Prometheus metrics (vmcp_opt/telemetry/metrics.py)."""

    # Count and time requests, backend calls, find_tool; serve them for Prometheus.
    enabled: bool = False
    # A separate diagnostics listener serving `/metrics`, `/healthz` and `/readyz` (over stdio too):
    # `port` or `host:port` (`[::1]:port` for IPv6), loopback unless a host is named. Unset: `/metrics` is
    # served on the main HTTP listener.
    listen: str | None = None

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
