"""Connections to the real MCP servers behind the gateway: one long-lived session per backend."""

from vmcp_opt.backends.connection import BackendConnection, BackendState
from vmcp_opt.backends.manager import BackendManager

__all__ = ["BackendConnection", "BackendManager", "BackendState"]
