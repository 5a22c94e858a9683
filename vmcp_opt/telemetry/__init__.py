"""What the gateway did, for operators: the audit log (audit.py), Prometheus metrics (metrics.py).

Everything here watches the router's operations (routing/operations.py) and calls nothing of the router,
the transports or the backends; `Telemetry` is made by the gateway from the `telemetry:` config section.
"""

from __future__ import annotations

from vmcp_opt.config import VmcpConfig
from vmcp_opt.routing.operations import OperationWatcher
from vmcp_opt.telemetry.audit import AuditLog
from vmcp_opt.telemetry.metrics import Metrics


class Telemetry:
    def __init__(self, config: VmcpConfig) -> None:
        settings = config.telemetry
        self.audit = AuditLog(settings.audit, config.base_dir) if settings.audit.enabled else None
        backends = [b.name for b in config.backends]
        self.metrics = Metrics(backends) if settings.metrics.enabled else None
        self.watchers: list[OperationWatcher] = [w for w in (self.audit, self.metrics) if w is not None]

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()


__all__ = ["AuditLog", "Metrics", "Telemetry"]
