"""ToolHive `compositeTools` as our `workflows`, and their Go templates as our Jinja2 ones.

Only a template whose every action is one field reference (`{{.params.x}}`, `{{.steps.ID.output.f}}`,
`{{.steps.ID.error}}`, a forEach's item or index) is translated: functions, pipelines, comparisons and `.vars` /
`.workflow` / `.content` mean something in Go's text/template that no rewrite can promise to keep. A workflow with
one such template is left out whole (its steps depend on one another; half a workflow would run differently) and
written, translated as far as it went, as a commented-out block for the user to finish.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmcp_opt.display import shorten
from vmcp_opt.importers.durations import seconds
from vmcp_opt.importers.findings import Findings

_REFERENCE = re.compile(r"\.[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
# A name a Jinja2 dot would resolve to a dict's method (`output.items`) instead of the key: written `["items"]`.
_DICT_ATTRIBUTES = frozenset(dir(dict))


def _jinja_path(parts: list[str]) -> str:
    text = parts[0]
    for part in parts[1:]:
        text += f'["{part}"]' if part in _DICT_ATTRIBUTES else f".{part}"
    return text


def _reference(action: str, item: str) -> str | None:
    """Our expression for one Go action that is a plain field reference; None for anything else."""
    if not _REFERENCE.fullmatch(action):
        return None
    parts = action[1:].split(".")
    root, rest = parts[0], parts[1:]
    if root == "params" and rest:
        return _jinja_path(parts)
    if root == "steps" and len(rest) >= 2:
        kind = rest[1]
        # Not `.status`: ToolHive's values ("completed") are not ours ("ok"), so a reference would change meaning.
        if kind == "output" or (kind == "error" and len(rest) == 2):
            return _jinja_path(parts)
    if root == "forEach" and rest and (rest[0] == item or (rest[0] == "index" and len(rest) == 1)):
        return _jinja_path(rest)
    return None


def _literal(text: str) -> str:
    """Text outside Go's actions, kept literal under Jinja2 (which would read `{%` and `{#` as its own)."""
    return text.replace("{%", "{{ '{%' }}").replace("{#", "{{ '{#' }}")


def go_template(text: str, item: str = "item") -> str | None:
    """`text` with each Go action rewritten for Jinja2, or None when one is more than a field reference."""
    pieces: list[str] = []
    position = 0
    # str.find, not a lazy regex: a regex retries from every `{{` that has no `}}` after it (quadratic).
    while (start := text.find("{{", position)) != -1:
        end = text.find("}}", start + 2)
        if end == -1:
            return None  # an action Go itself would not parse
        pieces.append(_literal(text[position:start]))
        expression = _reference(text[start + 2 : end].strip(), item)
        if expression is None:
            return None
        pieces.append("{{ " + expression + " }}")
        position = end + 2
    pieces.append(_literal(text[position:]))
    return "".join(pieces)


@dataclass
class _Workflow:
    """One composite tool's translation: what could not be translated decides whether it is kept."""

    path: str
    item: str = "item"
    untranslated: list[str] = field(default_factory=list)

    def template(self, value: str, where: str) -> str:
        converted = go_template(value, self.item)
        if converted is None:
            # The template as far as a line reads it: a file's value may be megabytes, and is printable by anyone.
            self.untranslated.append(f"{where}: Go template beyond a field reference: {shorten(repr(value), 200)}")
            return value
        return converted

    def templates(self, value: Any, where: str) -> Any:
        """Strings at any depth, as our arguments are templates at any depth."""
        if isinstance(value, str):
            return self.template(value, where)
        if isinstance(value, dict):
            return {key: self.templates(inner, f"{where}.{key}") for key, inner in value.items()}
        if isinstance(value, list):
            return [self.templates(inner, f"{where}[{index}]") for index, inner in enumerate(value)]
        return value


def composite_tools(
    tools: list[Any], resolve_tool: Callable[[str], str], findings: Findings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(workflows kept, workflows left out for a template) from `compositeTools`; `resolve_tool` turns a step's
    `workload.tool` into the name our gateway serves it under."""
    kept: list[dict[str, Any]] = []
    left: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        path = f"compositeTools[{index}]"
        if not isinstance(tool, dict):
            findings.skip(path, "not a mapping")
            continue
        workflow = _Workflow(path)
        converted = _workflow(tool, workflow, resolve_tool, findings)
        if workflow.untranslated:
            for line in workflow.untranslated:
                findings.skip(line, "workflow left out (written commented out, with a TODO, at the end)")
            left.append(converted)
        else:
            kept.append(converted)
    return kept, left


def _workflow(
    tool: dict[str, Any], workflow: _Workflow, resolve_tool: Callable[[str], str], findings: Findings
) -> dict[str, Any]:
    name = str(tool.get("name", ""))
    out: dict[str, Any] = {"name": name, "description": tool.get("description") or name}
    if tool.get("parameters"):
        out["parameters"] = tool["parameters"]
    if tool.get("timeout"):
        out["timeout"] = seconds(tool["timeout"], f"{workflow.path}.timeout", findings)
    if tool.get("annotations"):
        out["annotations"] = tool["annotations"]
    steps = tool.get("steps") or []
    out["steps"] = [
        _step(step, _Workflow(f"{workflow.path}.steps[{i}]"), workflow, resolve_tool, findings)
        for i, step in enumerate(steps)
    ]
    output = tool.get("output")
    if isinstance(output, dict) and output.get("properties"):
        out["output"] = _output(output["properties"], workflow, f"{workflow.path}.output.properties", findings)
        defaults = {key: spec["default"] for key, spec in output["properties"].items() if _has_default(spec)}
        if defaults:  # a top-level key's default: ours (`output_defaults`); a nested one's is reported by `_output`
            out["output_defaults"] = defaults
        schema: dict[str, Any] = {"type": "object", "properties": _schema(output["properties"])}
        if output.get("required"):
            schema["required"] = output["required"]
        out["output_schema"] = schema
    return {key: value for key, value in out.items() if value is not None}


def _step(
    step: dict[str, Any],
    here: _Workflow,
    workflow: _Workflow,
    resolve_tool: Callable[[str], str],
    findings: Findings,
) -> dict[str, Any]:
    kind = step.get("type") or "tool"
    out: dict[str, Any] = {"id": step.get("id")}
    if kind == "forEach":
        here.item = str(step.get("itemVar") or "item")
        out.update(type="for_each", item=here.item)
        if step.get("collection"):
            out["over"] = here.template(str(step["collection"]), f"{here.path}.collection")
        for theirs, ours in (("maxParallel", "max_parallel"), ("maxIterations", "max_iterations")):
            if step.get(theirs):
                out[ours] = step[theirs]
        inner = step.get("step") or {}
        _tool_call(inner, out, here, f"{here.path}.step", resolve_tool)
        for key in sorted(set(inner) - {"type", "tool", "arguments", "id"}):
            findings.skip(f"{here.path}.step.{key}", "a forEach's inner step takes only its tool and arguments")
    elif kind == "elicitation":
        out["type"] = "elicitation"
        if step.get("message"):
            out["message"] = here.template(str(step["message"]), f"{here.path}.message")
        if step.get("schema"):
            out["requested_schema"] = step["schema"]
        _elicitation_answers(step, out, here.path, findings)
    elif kind == "tool":
        _tool_call(step, out, here, here.path, resolve_tool)
    else:
        findings.skip(f"{here.path}.type", f"unknown step type {kind!r}; kept as a tool step")
    _step_common(step, out, here, findings)
    workflow.untranslated.extend(here.untranslated)
    return out


def _tool_call(
    step: dict[str, Any], out: dict[str, Any], here: _Workflow, path: str, resolve_tool: Callable[[str], str]
) -> None:
    if step.get("tool"):
        out["tool"] = resolve_tool(str(step["tool"]))
    if step.get("arguments"):
        out["arguments"] = here.templates(step["arguments"], f"{path}.arguments")


def _elicitation_answers(step: dict[str, Any], out: dict[str, Any], path: str, findings: Findings) -> None:
    for theirs, ours in (("onDecline", "on_decline"), ("onCancel", "on_cancel")):
        action = (step.get(theirs) or {}).get("action")
        if action in ("abort", "continue", "skip_remaining"):
            out[ours] = action
        elif action:
            findings.skip(f"{path}.{theirs}.action", f"{action!r} is not supported; the run aborts instead")


def _step_common(step: dict[str, Any], out: dict[str, Any], here: _Workflow, findings: Findings) -> None:
    if step.get("condition"):
        out["condition"] = here.template(str(step["condition"]), f"{here.path}.condition")
    if step.get("dependsOn"):
        out["depends_on"] = step["dependsOn"]
    if step.get("timeout") and (timeout := seconds(step["timeout"], f"{here.path}.timeout", findings)):
        out["timeout"] = timeout
    if "defaultResults" in step:
        out["default_result"] = step["defaultResults"]
    on_error = step.get("onError")
    if isinstance(on_error, dict) and on_error.get("action"):
        handling: dict[str, Any] = {"action": on_error["action"]}
        if on_error["action"] == "retry":
            if on_error.get("retryCount"):
                handling["retries"] = on_error["retryCount"]
            if on_error.get("retryDelay"):
                handling["delay"] = seconds(on_error["retryDelay"], f"{here.path}.onError.retryDelay", findings)
        out["on_error"] = handling


def _output(
    properties: dict[str, Any], workflow: _Workflow, path: str, findings: Findings, nested: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in properties.items():
        spec = spec if isinstance(spec, dict) else {}
        if spec.get("properties"):
            out[key] = _output(spec["properties"], workflow, f"{path}.{key}.properties", findings, nested=True)
        else:
            out[key] = workflow.template(str(spec.get("value", "")), f"{path}.{key}.value")
        if "default" in spec and (nested or spec.get("properties")):
            findings.skip(f"{path}.{key}.default", "a default only for a top-level output key (output_defaults)")
    return out


def _has_default(spec: Any) -> bool:
    return isinstance(spec, dict) and "default" in spec and not spec.get("properties")


def _schema(properties: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    for key, spec in properties.items():
        spec = spec if isinstance(spec, dict) else {}
        field_schema = {k: spec[k] for k in ("type", "description") if spec.get(k)}
        if spec.get("properties"):
            field_schema["properties"] = _schema(spec["properties"])
        schema[key] = field_schema
    return schema
