"""An MCP server with a large catalogue of real tool descriptions, for scale benchmarks of the optimizer.

Tools come from the ToolRet tasks in ../shared/eval-data (apigen, toolink); past their ~5,400 tools the
names get a numeric suffix so any size can be served. Calling a tool echoes its arguments.

    python examples/backends/catalog_server.py --tools 10000 [--data ../shared/eval-data]   # stdio
"""

from __future__ import annotations

import argparse
import json
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
        raise SystemExit(f"no tool data under {data} (expected toolret_subsets/*/tools.json)")
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
