"""A small MCP server that asks its client many things at once inside one call: for the gateway's bound on it.

    python examples/backends/chatty_asker.py        # stdio
`ask_client(kind, count)` sends `count` server-to-client requests concurrently (`roots` or `sampling`), related
to the call, and reports how many the client answered and which errors came back for the rest; `echo(text)`
answers at once (is the gateway still responsive?).
"""

from __future__ import annotations

import json

import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata

server = MCPServer("chatty-asker", instructions="Asks its client many things in one call; for the gateway's bounds.")


async def _ask(ctx: Context, kind: str) -> None:
    related = ServerMessageMetadata(related_request_id=ctx.request_context.request_id)
    if kind == "sampling":
        message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text="hello?"))
        request = types.CreateMessageRequest(params=types.CreateMessageRequestParams(messages=[message], max_tokens=8))
        await ctx.session.send_request(request, types.CreateMessageResult, metadata=related)
    else:
        await ctx.session.send_request(types.ListRootsRequest(), types.ListRootsResult, metadata=related)


@server.tool()
async def ask_client(ctx: Context, kind: str = "roots", count: int = 1) -> str:
    """Send `count` concurrent `roots/list` (kind "roots") or `sampling/createMessage` (kind "sampling") requests;
    report {"answered": n, "refused": m, "errors": [distinct error messages]}."""
    answered = 0
    errors: list[str] = []

    async def one() -> None:
        nonlocal answered
        try:
            await _ask(ctx, kind)
            answered += 1
        except MCPError as exc:
            errors.append(exc.error.message)

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)
    return json.dumps({"answered": answered, "refused": len(errors), "errors": sorted(set(errors))})


@server.tool()
def echo(text: str) -> str:
    """Echo `text`."""
    return text


if __name__ == "__main__":
    server.run()
