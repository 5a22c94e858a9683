"""What the gateway did, for operators: the audit log (audit.py), Prometheus metrics (metrics.py), OpenTelemetry
traces (tracing.py).

Everything here watches the router's operations (routing/operations.py) and calls nothing of the router,
the transports or the backends; `Telemetry` is made by the gateway from the `telemetry:` config section, and
the gateway tells the metrics where to read its state (`Metrics.state`).
"""

from __future__ import annotations

from vmcp_opt.config import VmcpConfig
from vmcp_opt.routing.operations import OperationWatcher
from vmcp_opt.telemetry.audit import AuditLog
from vmcp_opt.telemetry.metrics import GatewayState, Metrics


class Telemetry:
    def __init__(self, config: VmcpConfig) -> None:
        settings = config.telemetry
        self.audit = AuditLog(settings.audit, config.base_dir) if settings.audit.enabled else None
        backends = [b.name for b in config.backends]
        self.metrics = Metrics(backends) if settings.metrics.enabled else None
        if self.metrics is not None:
            self.metrics.state.audit = self.audit
        self.tracing = None
        if settings.tracing.enabled:
            # Imported only when on: the OpenTelemetry SDK costs start-up time a gateway without traces skips.
            from vmcp_opt.telemetry.tracing import Tracing

            self.tracing = Tracing(settings.tracing)
        self.watchers: list[OperationWatcher] = [w for w in (self.audit, self.metrics, self.tracing) if w is not None]

    def authenticated(self, method: str, outcome: str, address: str | None) -> None:
        """One HTTP request's authentication (server/authentication.py): counted, and audited when refused."""
        if self.metrics is not None:
            self.metrics.authenticated(method, outcome)
        if self.audit is not None and outcome != "accepted":
            self.audit.auth_denied(outcome, address)

    def close(self) -> None:
        try:
            if self.audit is not None:
                self.audit.close()
        finally:  # the last spans are sent whatever became of the audit log
            if self.tracing is not None:
                self.tracing.close()


__all__ = ["AuditLog", "GatewayState", "Metrics", "Telemetry"]
