"""Requests that arrive while the backends are still connecting wait for their first listing, bounded.

The gateway serves from its first moment (a desktop client launches it and asks at once), but until the
backends have listed their tools a `tools/list` or a call would find nothing. This middleware holds those
requests until the first catalogue is built, at most `server.startup_wait` seconds (`Gateway.wait_for_backends`);
after start-up it costs one check of a set event. The first request after start-up also moves the first
catalogue's objects out of the garbage collector's full collections (`speedups.freeze_heap`).
"""

from __future__ import annotations

from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext

from vmcp_opt import speedups
from vmcp_opt.gateway import Gateway

# Methods whose answer depends on what the backends serve.
CATALOGUE_METHODS = frozenset(
    {
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "completion/complete",
        # Sent to the backends that serve logging: one asked before they connected reached none of them, and a
        # client sets its level once, as it starts.
        "logging/setLevel",
    }
)


def startup_gate(gateway: Gateway) -> ServerMiddleware[Any]:
    """Middleware: hold catalogue requests until the backends' first listing (or `server.startup_wait`)."""
    # With the optimizer on, tools/list is the meta-tools, which need no backend, unless tools are pinned.
    waits_for_list = gateway.optimizer is None or bool(gateway.config.optimizer.pinned)
    methods = CATALOGUE_METHODS | {"tools/list"} if waits_for_list else CATALOGUE_METHODS

    frozen = False

    async def gate(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        nonlocal frozen
        if not frozen:
            if ctx.method in methods and not gateway.started:
                await gateway.wait_for_backends()
            if gateway.started:
                frozen = True
                speedups.freeze_heap()
        return await call_next(ctx)

    return gate
