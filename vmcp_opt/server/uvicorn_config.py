"""The `uvicorn.Config` settings every listener of the gateway shares (the MCP port and `telemetry.metrics.listen`):
the connection limits of server/connections.py, keep-alive, whose forwarding headers are believed, and uvicorn's
log lines through the gateway's own handler."""

from __future__ import annotations

import functools
import ipaddress
import math
from typing import Any

from vmcp_opt.config import VmcpConfig
from vmcp_opt.server.connections import fit_connections, limited_protocol


@functools.cache
def fitted_connections(max_connections: int) -> int:
    """`fit_connections` once per process: each listener asks, and its warning is said once."""
    return fit_connections(max_connections)


def listener_settings(config: VmcpConfig) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config`, whichever listener it configures."""
    limits = config.limits
    trusted = [ipaddress.ip_network(network) for network in config.server.trusted_proxies]
    return {
        "log_level": "warning",
        # uvicorn's lines through our handler, in the configured format; with its default, uvicorn's dictConfig
        # gives its loggers a plain-text handler of their own, for the whole process.
        "log_config": None,
        "http": limited_protocol(
            limits.http_header_timeout,
            limits.http_body_timeout,
            fitted_connections(limits.max_connections),
            limits.max_header_bytes,
            limits.max_connections_per_address,
            trusted,
            write_timeout=config.server.write_timeout,
        ),
        "timeout_keep_alive": math.ceil(limits.http_keep_alive_timeout),
        # The client's address from X-Forwarded-For only behind a trusted proxy (uvicorn's own default trusts any
        # loopback peer, which would let a local client name itself anything).
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": [str(network) for network in trusted],
    }
