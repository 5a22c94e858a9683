"""What is checked of workflows against the live catalogue (the file alone is checked by
`vmcp_opt/config/workflows.py` at load): tools their steps name, and the annotations their steps imply."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import mcp_types as types

from vmcp_opt.config.workflows import StepConfig, WorkflowConfig

logger = logging.getLogger(__name__)
_WARNED: set[str] = set()  # each contradiction is logged once, not at every catalogue change


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
    `annotations` over them, but for a hint claiming more safety than a step's tool declares (warned of once).
    `tools` maps names to catalogue entries with a `.tool` (types.Tool)."""
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
            # By the MCP names: a snake_case key (`read_only_hint`) lost to the derived camelCase one.
            explicit = types.ToolAnnotations.model_validate(workflow.annotations).model_dump(
                by_alias=True, exclude_unset=True
            )
            merged = {**derived.model_dump(by_alias=True, exclude_none=True), **explicit}
            for hint, steps_say in _contradicted(workflow, steps, explicit):
                merged[hint] = not merged[hint]
                _warn_once(
                    f"workflow '{workflow.name}': annotations.{hint}: {str(explicit[hint]).lower()} is not served: "
                    f"{steps_say}, so clients must not take the workflow for safer than that step"
                )
            return types.ToolAnnotations.model_validate(merged)
        return derived

    for workflow in workflows:
        found[workflow.name] = of_workflow(workflow, frozenset())
    return found


# Per hint: the value that claims more safety, and what a step declaring the other value is said to be.
_SAFER = {
    "readOnlyHint": (True, "not read-only"),
    "destructiveHint": (False, "destructive"),
    "idempotentHint": (True, "not idempotent"),
    "openWorldHint": (False, "open-world"),
}


def _contradicted(
    workflow: WorkflowConfig, steps: Sequence[types.ToolAnnotations], explicit: Mapping[str, Any]
) -> Iterator[tuple[str, str]]:
    """The workflow's explicit hints claiming more safety than a step's tool *declares* (a tool that declares
    nothing leaves the author free to know better): `readOnlyHint: true` over a step declared not read-only,
    say. Clients trust these hints (some run read-only tools without asking), so such a claim is not served.
    Yields the hint and what the first contradicting step's tool declares."""
    tool_steps: list[StepConfig] = [s for s in workflow.steps if s.tool is not None]
    for hint, (safer, unsafe) in _SAFER.items():
        if explicit.get(hint) is not safer:
            continue
        for step, declared in zip(tool_steps, steps, strict=True):
            said = declared.model_dump(by_alias=True).get(hint)
            if hint == "readOnlyHint" and said is None and declared.destructive_hint is True:
                said = False  # a tool that declares itself destructive has said it is not read-only
            # destructive and idempotent only mean something for a tool that is not read-only (MCP).
            moot = hint in ("destructiveHint", "idempotentHint") and declared.read_only_hint is True
            if said is not None and said is not safer and not moot:
                yield hint, f"step '{step.id}' calls '{step.tool}', declared {unsafe}"
                break


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s", message)
