"""What an operation is called in audit events, metric labels and spans: a small, fixed vocabulary."""

from __future__ import annotations

from vmcp_opt.routing.operations import Operation
from vmcp_opt.routing.providers import GATEWAY_SOURCE
from vmcp_opt.workflows.provider import WORKFLOW_SOURCE

# ToolHive's audit event types where they exist (pkg/audit/mcp_events.go), ours (vmcp_*) for the meta-tools.
_LIST_EVENTS = {
    "tools/list": "mcp_tools_list",
    "prompts/list": "mcp_prompts_list",
    "resources/list": "mcp_resources_list",
    "resources/templates/list": "mcp_resource_templates_list",
    "prompts/get": "mcp_prompt_get",
    "resources/read": "mcp_resource_read",
    "completion/complete": "mcp_completion",
}
META_TOOLS = {"find_tool": "vmcp_find_tool", "call_tool": "vmcp_call_tool"}
# Methods a metric label may carry; anything else is "other" (a label set that cannot grow).
METHODS = frozenset({"tools/call", "initialize", *_LIST_EVENTS})


def event_type(op: Operation) -> str:
    if op.method != "tools/call":
        return _LIST_EVENTS.get(op.method, "mcp_request")
    failed = op.outcome != "success"
    if op.backend == WORKFLOW_SOURCE:
        return "workflow_failed" if failed else "workflow_completed"
    parent = op.parent
    if parent is not None and parent.method == "tools/call" and parent.backend == WORKFLOW_SOURCE:
        return "workflow_step_failed" if failed else "workflow_step_completed"
    if op.backend == GATEWAY_SOURCE and op.target in META_TOOLS:
        return META_TOOLS[op.target]
    return "mcp_tool_call"


def target_type(method: str) -> str:
    if method.startswith("tools/"):
        return "tool"
    if method.startswith("prompts/"):
        return "prompt"
    if method.startswith("resources/"):
        return "resource"
    return "completion" if method.startswith("completion/") else "other"


def method_label(method: str) -> str:
    return method if method in METHODS else "other"
