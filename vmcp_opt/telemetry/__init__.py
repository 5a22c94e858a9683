"""What the gateway did, for operators: the audit log (audit.py), Prometheus metrics (metrics.py), OpenTelemetry
traces (tracing.py).

Everything here watches the router's operations (routing/operations.py) and calls nothing of the router,
the transports or the backends; `Telemetry` is made by the gateway from the `telemetry:` config section, and
the gateway tells the metrics where to read its state (`Metrics.state`).
"""

from __future__ import annotations

from vmcp_opt.auth import Caller
from vmcp_opt.config import VmcpConfig
from vmcp_opt.routing.operations import OperationWatcher
from vmcp_opt.telemetry.audit import AuditLog
from vmcp_opt.telemetry.metrics import GatewayState, Metrics
from vmcp_opt.telemetry.run_audit import round_refused


class Telemetry:
    def __init__(self, config: VmcpConfig) -> None:
        settings = config.telemetry
        self.audit = AuditLog(settings.audit, config.base_dir) if settings.audit.enabled else None
        backends = [b.name for b in config.backends]
        self.metrics = Metrics(backends, rate_limit_settings(config)) if settings.metrics.enabled else None
        if self.metrics is not None:
            self.metrics.state.audit = self.audit
        self.tracing = None
        if settings.tracing.enabled:
            # Imported only when on: the OpenTelemetry SDK costs start-up time a gateway without traces skips.
            from vmcp_opt.telemetry.tracing import Tracing

            self.tracing = tracing = Tracing(settings.tracing)
            if self.metrics is not None:
                self.metrics.state.spans_dropped = lambda: tracing.dropped
        self.watchers: list[OperationWatcher] = [w for w in (self.audit, self.metrics, self.tracing) if w is not None]

    def authenticated(self, method: str, outcome: str, address: str | None) -> None:
        """One HTTP request's authentication (server/authentication.py): counted, and audited when refused (each
        address's first refusal of a kind per interval, the rest in a summary: telemetry/audit_summaries.py)."""
        if self.metrics is not None:
            self.metrics.authenticated(method, outcome)
        if self.audit is not None and outcome != "accepted":
            self.audit.auth_denied(outcome, address)

    def rate_limited(self, caller: Caller, setting: str, tool: str, method: str = "tools/call") -> None:
        """A tool call (or a forwarded `method`, named as `tool` too) refused by a rate limit, before it reached the
        router (server/rate_limit_gate.py) or by it (`RateLimiter.on_refused`: over stdio, and calls made inside
        another): counted by setting, and audited."""
        if self.metrics is not None:
            self.metrics.rate_limited(setting)
        if self.audit is not None:
            self.audit.rate_limited(caller, setting, tool, method)

    def session_refused(self, caller: Caller, reason: str, session: str | None = None) -> None:
        """An HTTP request refused before a session served it: it named a session another principal opened
        (`reason` "session_owner", answered 404; `session` that session's caller id, never its id), or it would
        have opened one past `limits.max_sessions_per_address` or `limits.max_sessions` (`reason` the setting).
        Counted by reason, and audited with who asked (`caller`, server/admission.py `refused_caller`) and from where."""
        if self.metrics is not None:
            self.metrics.session_refused(reason)
        if self.audit is not None:
            self.audit.session_refused(caller, reason, session)

    def round_refused(self, caller: Caller, method: str, target: str | None, request_id: str | int | None) -> None:
        """A 2026-07-28 retry whose `requestState` was refused before any handler (routing/round_trips/state.py
        `RefusalsTold`): audited, with the request's method, the tool, prompt or resource it names, and its id."""
        if self.audit is not None:
            round_refused(self.audit, caller, method, target, request_id)

    def close(self) -> None:
        try:
            if self.audit is not None:
                self.audit.close()
        finally:  # the last spans are sent whatever became of the audit log
            if self.tracing is not None:
                self.tracing.close()


def rate_limit_settings(config: VmcpConfig) -> frozenset[str]:
    """The settings a rate-limit refusal may name (shared/rate_limits.py `RateLimiter.buckets`): a bounded label."""
    per_tool = {f"rate_limits.per_tool.{tool}" for tool in config.rate_limits.per_tool}
    return frozenset({"rate_limits.per_caller", "rate_limits.shared", *per_tool})


__all__ = ["AuditLog", "GatewayState", "Metrics", "Telemetry"]
