"""What is checked of workflows against the live catalogue (the file alone is checked by
`vmcp_opt/config/workflows.py` at load): tools their steps name, and the annotations their steps imply."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import mcp_types as types

from vmcp_opt.config.workflows import WorkflowConfig


def unknown_tools(workflows: Sequence[WorkflowConfig], known: Collection[str]) -> list[str]:
    """`workflows[i].steps[j].tool: unknown tool 'x'` for every step naming a tool nothing serves now."""
    names = {w.name for w in workflows}
    return [
        f"workflows[{i}].steps[{j}].tool: unknown tool '{step.tool}' (no backend or workflow serves it now)"
        for i, workflow in enumerate(workflows)
        for j, step in enumerate(workflow.steps)
        if step.tool is not None and step.tool not in known and step.tool not in names
    ]


def derived_annotations(
    workflows: Sequence[WorkflowConfig], tools: Mapping[str, Any]
) -> dict[str, types.ToolAnnotations]:
    """Per workflow: read-only only if every step's tool is, destructive if any step's is (a tool that does
    not say counts as MCP's defaults: not read-only, destructive, open world), then the workflow's own
    `annotations` over them. `tools` maps names to catalogue entries with a `.tool` (types.Tool)."""
    by_name = {w.name: w for w in workflows}
    found: dict[str, types.ToolAnnotations] = {}

    def of_tool(name: str, seen: frozenset[str]) -> types.ToolAnnotations:
        if name in by_name:
            return of_workflow(by_name[name], seen) if name not in seen else types.ToolAnnotations()
        entry = tools.get(name)
        annotations = getattr(getattr(entry, "tool", None), "annotations", None)
        return annotations or types.ToolAnnotations()

    def of_workflow(workflow: WorkflowConfig, seen: frozenset[str]) -> types.ToolAnnotations:
        steps = [of_tool(s.tool, seen | {workflow.name}) for s in workflow.steps if s.tool is not None]
        read_only = all(a.read_only_hint is True for a in steps)
        derived = types.ToolAnnotations(
            title=None,
            read_only_hint=read_only,
            destructive_hint=False if read_only else any(a.destructive_hint is not False for a in steps),
            idempotent_hint=all(a.idempotent_hint is True or a.read_only_hint is True for a in steps),
            open_world_hint=any(a.open_world_hint is not False for a in steps),
        )
        if workflow.annotations:
            merged = {**derived.model_dump(by_alias=True, exclude_none=True), **workflow.annotations}
            return types.ToolAnnotations.model_validate(merged)
        return derived

    for workflow in workflows:
        found[workflow.name] = of_workflow(workflow, frozenset())
    return found
