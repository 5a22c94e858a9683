"""An MCP server whose tools live in a file several copies share: one copy per gateway replica, one catalogue.

    SHARED_TOOLS_FILE=/tmp/tools.json python examples/backends/shared_tools_server.py    # stdio
`add_tool(name)` adds an echo tool to the file and announces `list_changed` on the calling session only;
every copy lists the file's tools each time it is asked, so a copy that was not told lists the new tool
as soon as someone asks it: what a replica that did not notice a change sees once told to re-list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

TOOLS_FILE = Path(os.environ.get("SHARED_TOOLS_FILE", "shared-tools.json"))
TEXT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}
ADD_TOOL = types.Tool(
    name="add_tool",
    description="Add an echo tool to the shared catalogue; every copy of this server lists it.",
    input_schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
)
# This copy's `subscriptions/listen` streams (2026-07-28 clients); a 2025-11-25 client hears its session.
BUS = InMemorySubscriptionBus()


async def added() -> list[str]:
    path = anyio.Path(TOOLS_FILE)
    names: Any = json.loads(await path.read_text()) if await path.exists() else []
    return [name for name in names if isinstance(name, str)]


async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    echoes = [
        types.Tool(name=name, description=f"Echo text as {name}", input_schema=TEXT_SCHEMA) for name in await added()
    ]
    return types.ListToolsResult(tools=[ADD_TOOL, *echoes])


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    arguments = params.arguments or {}
    if params.name == "add_tool":
        names = await added()
        await anyio.Path(TOOLS_FILE).write_text(json.dumps([*names, str(arguments["name"])]))
        await BUS.publish(ToolsListChanged())
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            await ctx.session.send_tool_list_changed()
        text = f"added tool '{arguments['name']}'"
    else:
        text = f"{params.name}: {arguments.get('text', '')}"
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def main() -> None:
    server = Server(
        "shared-tools", on_list_tools=list_tools, on_call_tool=call_tool, on_subscriptions_listen=ListenHandler(BUS)
    )

    async def serve() -> None:
        async with stdio_server() as (read, write):
            options = server.create_initialization_options(NotificationOptions(tools_changed=True))
            await server.run(read, write, options)

    anyio.run(serve)


if __name__ == "__main__":
    main()
