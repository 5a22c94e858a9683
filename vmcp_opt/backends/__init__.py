"""Connections to the real MCP servers behind the gateway: one long-lived session per backend.

The names below load on first use: importing a light module of this package (`backends.launch`, which `vmcp
validate` uses) then does not import the connection code and, with it, the MCP SDK (~0.4 s)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmcp_opt.backends.connection import BackendConnection, BackendState
    from vmcp_opt.backends.manager import BackendManager

__all__ = ["BackendConnection", "BackendManager", "BackendState"]

_HOMES = {
    "BackendConnection": "vmcp_opt.backends.connection",
    "BackendState": "vmcp_opt.backends.connection",
    "BackendManager": "vmcp_opt.backends.manager",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
