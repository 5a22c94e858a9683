"""What an operation is called in audit events, metric labels and spans: a small, fixed vocabulary."""

from __future__ import annotations

from typing import Any, NamedTuple

from vmcp_opt.routing.operations import Operation
from vmcp_opt.routing.providers import GATEWAY_SOURCE
from vmcp_opt.workflows.provider import WORKFLOW_SOURCE
from vmcp_opt.workflows.step_events import TIMED_OUT_NOTE

# ToolHive's audit event types where they exist (pkg/audit/mcp_events.go), ours (vmcp_*) for the meta-tools.
_LIST_EVENTS = {
    "initialize": "mcp_initialize",
    "server/discover": "mcp_initialize",  # a 2026-07-28 client's session start (server/handlers.py)
    "tools/list": "mcp_tools_list",
    "prompts/list": "mcp_prompts_list",
    "resources/list": "mcp_resources_list",
    "resources/templates/list": "mcp_resource_templates_list",
    "prompts/get": "mcp_prompt_get",
    "resources/read": "mcp_resource_read",
    "completion/complete": "mcp_completion",
    "logging/setLevel": "mcp_logging",
}
META_TOOLS = {"find_tool": "vmcp_find_tool", "call_tool": "vmcp_call_tool"}
# The error a request answered with an `InputRequiredResult` ends with (routing/operations.py `watched`), and the
# outcome its event states: the client was asked something, and nothing it asked for is done yet.
INPUT_REQUIRED = "input_required"
# Methods a metric label may carry; anything else is "other" (a label set that cannot grow).
METHODS = frozenset({"tools/call", "initialize", "resources/subscribe", "resources/unsubscribe", *_LIST_EVENTS})


def event_type(op: Operation) -> str:
    if op.method != "tools/call":
        return _LIST_EVENTS.get(op.method, "mcp_request")
    failed = op.outcome != "success"
    if op.backend == WORKFLOW_SOURCE:
        if failed and op.notes.get(TIMED_OUT_NOTE):  # as ToolHive: ran out of time, not broken
            return "workflow_timed_out"
        return "workflow_failed" if failed else "workflow_completed"
    parent = op.parent
    if parent is not None and parent.method == "tools/call" and parent.backend == WORKFLOW_SOURCE:
        return "workflow_step_failed" if failed else "workflow_step_completed"
    if op.backend == GATEWAY_SOURCE and op.target in META_TOOLS:
        return META_TOOLS[op.target]
    return "mcp_tool_call"


def asked_input(op: Operation) -> bool:
    """Whether the request was answered with an `InputRequiredResult` (a 2026-07-28 round): not a success, the
    call goes on with the client's retry, a request of its own."""
    return op.error == INPUT_REQUIRED and op.outcome == "success"


def event_outcome(op: Operation) -> str:
    """The outcome an event states: the operation's, but `input_required` for a request answered with a question.
    Written `success`, the first request of a call whose user then declined to approve it read as the tool run."""
    return INPUT_REQUIRED if asked_input(op) else op.outcome


def continues_run(op: Operation) -> bool:
    """Whether a 2026-07-28 client's retry continues a pending workflow run: its round (the unsealed
    requestState) names the run, as routing/round_trips/state.py's `WorkflowRound.run` (read by its name:
    telemetry imports nothing of the rounds)."""
    round_ = op.exchange.round if op.exchange is not None else None
    return op.backend == WORKFLOW_SOURCE and isinstance(getattr(round_, "run", None), str)


def refused_retry(op: Operation) -> bool:
    """Whether a retry continuing a workflow run was refused before it reached the run: the run is gone (it
    finished, was cancelled, its client came back too late), another request continues it, its answers fit no
    question, the policy or the replica holding it refused. The run writes no end for it (`continues_run`), so
    this is its only event; a retry that reached the run answers with the run's result or its next question."""
    return continues_run(op) and op.outcome in ("failure", "denied")


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


class FindToolSummary(NamedTuple):
    results: int
    ranking: str  # "hybrid" or "keyword" (optimizer/index.py)
    top_score: float | None
    tokens_saved: int  # tokens find_tool's answer saved against the full tools/list
    saved_percent: float | None  # the same in percent of the full list, 0 to 100


def find_tool_summary(result: Any) -> FindToolSummary | None:
    """What a find_tool result says of itself (optimizer/metatools.py puts it in `structured_content`)."""
    answer = getattr(result, "structured_content", None)
    if not isinstance(answer, dict) or not isinstance(answer.get("tools"), list):
        return None
    tools = answer["tools"]
    scores = [t["score"] for t in tools if isinstance(t, dict) and isinstance(t.get("score"), int | float)]
    tokens = answer.get("tokens") or {}
    full, saved = tokens.get("full_tool_list"), tokens.get("saved")
    saved = saved if isinstance(saved, int) else 0
    percent = min(100.0, max(0.0, 100.0 * saved / full)) if isinstance(full, int) and full > 0 else None
    top = max(scores, default=None)
    return FindToolSummary(len(tools), str(answer.get("ranking", "unknown")), top, saved, percent)
