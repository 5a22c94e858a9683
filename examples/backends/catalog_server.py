"""An MCP server with a large catalogue of real tool descriptions, for scale benchmarks of the optimizer.

Tools come from the ToolRet tasks in ../shared/eval-data (apigen, toolink); past their ~5,400 tools the
names get a numeric suffix so any size can be served. Without that data (a clone on its own, as CI has it) the
tools are made up from a small vocabulary, said on stderr: enough for tests that need a large catalogue, not
for measuring retrieval. Calling a tool echoes its arguments.

    python examples/backends/catalog_server.py --tools 10000 [--data ../shared/eval-data]   # stdio
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "eval-data"
_JSON_TYPES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "list": "array",
    "dict": "object",
}


def load_tools(data: Path, count: int) -> list[types.Tool]:
    base: list[types.Tool] = []
    for task in ("apigen", "toolink"):
        path = data / "toolret_subsets" / task / "tools.json"
        if path.exists():
            base.extend(_tool(entry["documentation"]) for entry in json.loads(path.read_text(encoding="utf-8")))
    if not base:
        print(f"no tool data under {data} (toolret_subsets/*/tools.json): made-up tools served", file=sys.stderr)
        base = _made_up_tools()
    tools: list[types.Tool] = []
    seen: set[str] = set()
    for i in range(count):
        tool = base[i % len(base)]
        name = tool.name if i < len(base) else f"{tool.name}_{i // len(base)}"
        if name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        tools.append(tool.model_copy(update={"name": name}))
    return tools


_VERBS = ("get", "list", "create", "update", "delete", "search", "export", "import", "archive", "restore")
_THINGS = (
    "invoice",
    "customer",
    "order",
    "ticket",
    "report",
    "calendar event",
    "shipment",
    "payment",
    "product",
    "warehouse",
    "employee",
    "contract",
    "forecast",
    "playlist",
    "repository",
    "dataset",
)
_DETAILS = ("by its id", "for a date range", "with optional filters", "in a given region", "for one account")


def _made_up_tools() -> list[types.Tool]:
    """One tool per verb, thing and detail (800), each described in a sentence with two parameters."""
    return [
        _tool(
            {
                "name": f"{verb}_{thing.replace(' ', '_')}_{index}",
                "description": f"{verb.capitalize()} a {thing} {detail}.",
                "parameters": {
                    "id": {"type": "str", "description": f"The {thing}'s identifier."},
                    "limit": {"type": "int", "description": "How many results at most."},
                },
            }
        )
        for verb in _VERBS
        for thing in _THINGS
        for index, detail in enumerate(_DETAILS)
    ]


def _tool(doc: dict[str, Any]) -> types.Tool:
    properties: dict[str, Any] = {}
    params = doc.get("parameters") or {}
    if isinstance(params, dict):
        for name, spec in params.items():
            spec = spec if isinstance(spec, dict) else {}
            kind = _JSON_TYPES.get(str(spec.get("type", "str")).split(",")[0].strip(), "string")
            properties[str(name)] = {"type": kind, "description": str(spec.get("description", ""))[:300]}
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(doc.get("name", "tool")))[:60] or "tool"
    return types.Tool(
        name=name,
        description=str(doc.get("description", ""))[:1000],
        input_schema={"type": "object", "properties": properties},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    tools = load_tools(args.data, args.tools)

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        text = json.dumps({"tool": params.name, "arguments": params.arguments or {}})
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server = Server("catalog", on_list_tools=list_tools, on_call_tool=call_tool)

    async def serve() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(serve)


if __name__ == "__main__":
    main()
