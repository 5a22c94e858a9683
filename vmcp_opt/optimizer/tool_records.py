"""What the optimizer indexes for a tool (a `ToolRecord`, optimizer/documents.py) from what the gateway serves: a
backend's tool in the catalogue, or a provider's own (a workflow); and what the meta-tools themselves cost in a
tools/list."""

from __future__ import annotations

from vmcp_opt.aggregation import RoutedTool
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.meta_tool_forms import META_TOOLS
from vmcp_opt.optimizer.tokens import tools_list_tokens
from vmcp_opt.routing import ProvidedTool


def meta_tools_tokens(model: str) -> int:
    """What `tools/list` costs with the optimizer on: the meta-tools (pinned tools come on top)."""
    return tools_list_tokens(META_TOOLS, model)


def tool_record(routed: RoutedTool, backend_description: str) -> ToolRecord:
    tool = routed.tool
    return ToolRecord(
        name=routed.name,
        backend=routed.backend,
        description=tool.description or "",
        input_schema=tool.input_schema,
        title=tool.title,
        backend_description=backend_description,
        original_name=routed.original_name,
    )


def provided_record(tool: ProvidedTool) -> ToolRecord:
    return ToolRecord(
        name=tool.name,
        backend=tool.source,
        description=tool.tool.description or "",
        input_schema=tool.tool.input_schema,
        title=tool.tool.title,
        backend_description=tool.source_description,
        original_name=tool.original_name,
    )
