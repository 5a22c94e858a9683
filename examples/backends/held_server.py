"""A small MCP server whose one tool answers only when told to: for holding a call in flight (drain tests).

    python examples/backends/held_server.py        # stdio
`held_echo(message, gate)` touches `<gate>.started`, then waits until the file `gate` exists and echoes.
"""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("held", instructions="Echoes once a file appears; for shutdown demos and tests.")


@server.tool()
async def held_echo(message: str, gate: str) -> str:
    """Echo a message once the file `gate` exists; touches `gate`.started when the call arrives."""
    await anyio.Path(gate + ".started").touch()
    while not await anyio.Path(gate).exists():  # noqa: ASYNC110 - another process makes the file
        await anyio.sleep(0.05)
    return message


if __name__ == "__main__":
    server.run()
