"""The gateway over stdio, so a desktop client can launch it as a subprocess."""

from __future__ import annotations

import anyio
from mcp.server.stdio import stdio_server

from vmcp_opt.gateway import Gateway
from vmcp_opt.server.handlers import build_mcp_server


async def serve_stdio(gateway: Gateway) -> None:
    async with anyio.create_task_group() as task_group:
        await gateway.start(task_group)
        server = build_mcp_server(gateway, "stdio")
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
        gateway.stop()
