"""A small MCP server that shows what reached it: for following a trace through the gateway.

    python examples/backends/trace_echo_server.py        # stdio

`request_meta` returns the `_meta` of the request that called it, so a test (or a curious operator) can
see the W3C `traceparent` the gateway sent on.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("trace-echo", instructions="Echoes the _meta of its requests; for tracing demos and tests.")


@server.tool()
def request_meta(ctx: Context) -> dict[str, Any]:
    """The `_meta` this request arrived with (traceparent, tracestate, …)."""
    meta = ctx.request_context.meta
    return {"meta": dict(meta) if meta else {}}


if __name__ == "__main__":
    server.run()
