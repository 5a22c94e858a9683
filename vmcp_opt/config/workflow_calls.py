"""Checks across workflows, behind config/workflows.py: unique names, no workflow reaching itself through its
steps' tools (named directly, or as a literal `tool_name` of a `call_tool` step), and each step calling another
workflow checked against the callee: the arguments it requires (and, when it takes no others, the ones it does
not know), which failed every run of the calling step while `vmcp validate` said the config was valid. A step
calling a workflow that asks its user is warned of (`nested_ask_warnings`): a workflow run by another's step
cannot ask (its exchange has no client session: workflows/provider.py)."""

from __future__ import annotations

from typing import Any

from vmcp_opt.config.workflow_graph import find_cycles

CALL_TOOL = "call_tool"  # the meta-tool through which a step may call any tool by name (`arguments.tool_name`)

Step = tuple[str, str, str | None, dict[str, Any]]  # id, type, tool, arguments
Workflow = tuple[str, dict[str, Any], list[Step]]  # name, parameters, steps


def across_workflow_problems(workflows: list[Workflow]) -> list[str]:
    """One line per problem, by path (`workflows[3].steps[0].arguments: ...`)."""
    names = [name for name, _, _ in workflows]  # "": a raw definition without a readable name, kept in its place
    problems = repeated_workflow_names([name for name in names if name])
    known = set(names) - {""}
    calls = {name: sorted(_called(steps, known)) for name, _, steps in workflows}
    for cycle in find_cycles(calls):
        problems.append(
            f"workflows[{names.index(cycle[0])}]: workflows call each other in a cycle: {' -> '.join(cycle)}"
        )
    return problems + _call_problems(workflows)


def raw_workflow_problems(definitions: Any) -> list[str]:
    """`across_workflow_problems` on raw definitions, for `vmcp validate` to report with the fields' problems in
    one pass (pydantic checks across workflows only once every field is valid); what cannot be read is left
    out, and a workflow without a readable name (it keeps its place, so the paths stay right)."""
    readable: list[Workflow] = []
    for definition in definitions if isinstance(definitions, list) else []:
        name = definition.get("name") if isinstance(definition, dict) else None
        if not isinstance(definition, dict) or not isinstance(name, str):
            readable.append(("", {}, []))  # no call reaches it, and it calls nothing that is checked
            continue
        parameters, steps = definition.get("parameters"), definition.get("steps")
        readable.append(
            (
                name,
                parameters if isinstance(parameters, dict) else {},
                [_raw_step(step) for step in (steps if isinstance(steps, list) else []) if isinstance(step, dict)],
            )
        )
    return across_workflow_problems(readable)


def _raw_step(step: dict[str, Any]) -> Step:
    tool, arguments, kind = step.get("tool"), step.get("arguments"), step.get("type", "tool")
    return (
        str(step.get("id")),
        kind if isinstance(kind, str) else "tool",
        tool if isinstance(tool, str) else None,
        arguments if isinstance(arguments, dict) else {},
    )


def repeated_workflow_names(names: list[str]) -> list[str]:
    repeated = sorted({n for n in names if names.count(n) > 1})
    return [f"workflows: names must be unique, repeated: {', '.join(repeated)}"] if repeated else []


def _called(steps: list[Step], workflows: set[str]) -> set[str]:
    """The workflows the steps call: by name, or through call_tool with a literal `tool_name` (a template
    there is only known at run time, where nesting is bounded: workflows/provider.py)."""
    called = set()
    for _, _, tool, arguments in steps:
        target, _, _ = _target(tool, arguments)
        if target is not None and target in workflows:
            called.add(target)
    return called


def _target(tool: str | None, arguments: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None, str]:
    """The tool a step calls (a literal name: a template is known only at run time), the arguments it passes
    when the config writes them as a mapping, and where they are."""
    if tool != CALL_TOOL:
        return tool, arguments, "arguments"
    name = arguments.get("tool_name")
    if not isinstance(name, str) or "{{" in name or "{%" in name:
        return None, None, "arguments"
    passed = arguments.get("arguments", {})
    return name, passed if isinstance(passed, dict) else None, "arguments.arguments"


def _call_problems(workflows: list[Workflow]) -> list[str]:
    """Each step calling a workflow it cannot call as written, naming both workflows and the step."""
    callees = {name: parameters for name, parameters, _ in workflows if name}
    problems = []
    for index, (name, _, steps) in enumerate(workflows):
        for step_index, (step_id, _, tool, arguments) in enumerate(steps):
            target, passed, where = _target(tool, arguments)
            if target is None or target not in callees:
                continue
            parameters = callees[target]
            prefix = (
                f"workflows[{index}].steps[{step_index}].{where}: workflow '{name}' step '{step_id}' "
                f"calls workflow '{target}'"
            )
            if passed is not None:
                problems += [f"{prefix} {problem}" for problem in _argument_problems(parameters, passed)]
    return problems


def nested_ask_warnings(workflows: list[Workflow]) -> list[str]:
    """Each step calling a workflow that asks its user: run by another's step, it cannot (its elicitation step
    fails). Warned of, not refused: the calling step may go on (`on_error: continue`), or the callee's question
    be skipped by its `condition`, and a config that loaded before must still load."""
    asking = {name: _asking_step(steps) for name, _, steps in workflows}
    warnings = []
    for name, _, steps in workflows:
        for step_id, _, tool, arguments in steps:
            target, _, _ = _target(tool, arguments)
            asks_in = asking.get(target) if target is not None else None
            if asks_in is not None:
                warnings.append(
                    f"workflow '{name}' step '{step_id}' calls workflow '{target}', which asks its user (step "
                    f"'{asks_in}'): a workflow run by another's step cannot ask, so that question fails every run"
                )
    return warnings


def _asking_step(steps: list[Step]) -> str | None:
    return next((step_id for step_id, kind, _, _ in steps if kind == "elicitation"), None)


def _argument_problems(parameters: dict[str, Any], arguments: dict[str, Any]) -> list[str]:
    """Required arguments missing (checked before defaults are filled in: workflows/provider.py), and, when the
    callee takes no others, the ones it does not know."""
    properties = parameters.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = parameters.get("required")
    problems = [
        f"without its required argument '{name}'"
        for name in (required if isinstance(required, list) else [])
        if isinstance(name, str) and name not in arguments
    ]
    if parameters.get("additionalProperties") is False:
        problems += [
            f"with argument '{name}', which it does not take (its parameters allow no others)"
            for name in arguments
            if name not in properties
        ]
    return problems
