"""A stdio MCP backend whose catalogue is a JSON file, re-read at every list (tests/test_agg_*.py).

    AGG_SPEC=/tmp/spec.json AGG_NAME=a python tests/agg_backend.py

The file: {"tools": [names], "prompts": [names], "resources": [uris], "templates": [URI templates]}; with "down": true the process exits at
start (a backend that cannot come back). AGG_NO_TEMPLATES=1: resources/templates/list is not served. Any tool call answers
"<AGG_NAME>:<tool>", so a test sees which backend served it; the tool `relist_<AGG_NAME>` (always listed) tells the
calling session that tools, prompts and resources changed, after the test has rewritten the file.
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
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

SPEC = Path(os.environ.get("AGG_SPEC", "spec.json"))
NAME = os.environ.get("AGG_NAME", "backend")
# `subscriptions/listen` streams: a 2026-07-28 client (the gateway) hears changes there, not on its session.
BUS = InMemorySubscriptionBus()
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}


def spec() -> dict[str, list[str]]:
    data: Any = json.loads(SPEC.read_text(encoding="utf-8")) if SPEC.exists() else {}
    return {key: [str(v) for v in data.get(key, [])] for key in ("tools", "prompts", "resources", "templates")}


async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    names = [f"relist_{NAME}", *spec()["tools"]]
    return types.ListToolsResult(
        tools=[types.Tool(name=n, description=f"{n} of {NAME}", input_schema=SCHEMA) for n in names]
    )


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name == f"relist_{NAME}":
        for change in (ToolsListChanged(), PromptsListChanged(), ResourcesListChanged()):
            await BUS.publish(change)
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            await ctx.session.send_tool_list_changed()
            await ctx.session.send_prompt_list_changed()
            await ctx.session.send_resource_list_changed()
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"{NAME}:{params.name}")])


async def list_prompts(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
    return types.ListPromptsResult(
        prompts=[types.Prompt(name=n, description=f"{n} of {NAME}") for n in spec()["prompts"]]
    )


async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    text = types.TextContent(type="text", text=f"{NAME}:{params.name}")
    return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=text)])


async def list_resources(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=[types.Resource(name=u, uri=u) for u in spec()["resources"]])


async def list_templates(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
    templates = [types.ResourceTemplate(name=t, uri_template=t) for t in spec()["templates"]]
    return types.ListResourceTemplatesResult(resource_templates=templates)


async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    return types.ReadResourceResult(contents=[types.TextResourceContents(uri=params.uri, text=f"{NAME}:{params.uri}")])


def main() -> None:
    if SPEC.exists() and json.loads(SPEC.read_text(encoding="utf-8")).get("down"):
        raise SystemExit(1)
    server = Server(
        "agg-backend",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_list_resource_templates=None if os.environ.get("AGG_NO_TEMPLATES") else list_templates,
        on_subscriptions_listen=ListenHandler(BUS),
    )

    async def serve() -> None:
        async with stdio_server() as (read, write):
            changes = NotificationOptions(tools_changed=True, prompts_changed=True, resources_changed=True)
            await server.run(read, write, server.create_initialization_options(changes))

    anyio.run(serve)


if __name__ == "__main__":
    main()
