"""Routing: one router every request passes, tool providers behind one interface, sessions per caller."""

from vmcp_opt.routing.exchange import Exchange
from vmcp_opt.routing.policy import AllowAll, Decision, Denied, Policy, Target
from vmcp_opt.routing.providers import (
    GATEWAY_SOURCE,
    BackendTools,
    Dispatch,
    ProvidedTool,
    ToolCall,
    ToolProvider,
    error_result,
)
from vmcp_opt.routing.router import CallObserver, Router, UnknownTool
from vmcp_opt.routing.sessions import SessionChooser

__all__ = [
    "GATEWAY_SOURCE",
    "AllowAll",
    "BackendTools",
    "CallObserver",
    "Decision",
    "Denied",
    "Dispatch",
    "Exchange",
    "Policy",
    "ProvidedTool",
    "Router",
    "SessionChooser",
    "Target",
    "ToolCall",
    "ToolProvider",
    "UnknownTool",
    "error_result",
]
