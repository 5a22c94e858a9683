"""The `workflows:` section of the config: composite tools, checked at load as far as the file alone allows.

A leaf like `config.py` (which imports it): it imports nothing of the package but its own graph and template
analysis (`workflow_graph.py`, `template_checks.py`) and the checks across workflows (`workflow_calls.py`). It
lives beside `config.py` rather than inside it so that file stays readable; `vmcp config-docs` walks it as part
of the same model.

What is refused here, each by its path (`workflows[0].steps[2].depends_on: unknown step 'fetch'`): unknown
keys, duplicate names and step ids, unknown or cyclic `depends_on`, a template that does not compile in the
runtime's sandbox (an unknown filter or test), reads a name the run does not give it there (`param`, `item`
outside a for_each's arguments, `lipsum`) or a parameter its schema does not list, or reads a step which is
not among the step's dependencies, a parameter schema that is not JSON Schema, an `output_schema` that is not
an object schema or requires a key `output` never makes, an `output_defaults` entry for no key of `output` or
that its key's schema refuses, workflows that call each other in a cycle, a step
calling a workflow without its required arguments or one that asks its user, and elicitation steps without
a message or a flat form. What needs the live catalogue (a step naming a tool no backend serves) is checked
when the gateway starts (`vmcp_opt/workflows/validation.py`). Warned of rather than refused: a `${VAR}` in a
step's templates, which nothing expands there (`env_reference_warnings`).

Past ~450 lines: the models and the load-time checks that read them stay together, so a field and the check of
it are read side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jsonschema
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from vmcp_opt.config.base import ENV_REFERENCE
from vmcp_opt.config.workflow_calls import (
    Workflow,
    across_workflow_problems,
    nested_ask_warnings,
    raw_workflow_problems,
    repeated_workflow_names,
)
from vmcp_opt.config.workflow_graph import (
    ancestors_of,
    find_cycle,
    output_schema_problems,
    parameter_problems,
    schema_problems,
    step_templates,
    template_names,
    template_problems,
    walk_strings,
)

WORKFLOW_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
STEP_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
# The meta-tools' names: a workflow may not take them.
RESERVED_NAMES = frozenset({"find_tool", "call_tool"})
# The names a for_each step's templates read besides its item, which the item may therefore not take.
TEMPLATE_NAMES = ("params", "steps", "index")
# A `${VAR}` reference, as backend fields spell it (config/base.py): not expanded in workflows, so warned of.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# Per step type, the fields it never reads (given, they are warned of: `StepConfig.unused_settings`).
_UNUSED_FIELDS: dict[str, tuple[str, ...]] = {
    "tool": ("item", "max_parallel", "max_iterations", "on_decline", "on_cancel"),
    "for_each": ("on_decline", "on_cancel"),
    "elicitation": ("item", "max_parallel", "max_iterations"),
}
_RETRY_FIELDS = ("retries", "delay", "multiplier", "max_delay")


class OnErrorConfig(_Strict):
    """What a failed step does: `abort` the run, `continue` without it (its dependants are skipped unless it
    has a `default_result`), or `retry` it with exponential backoff and then abort. A bare string
    (`on_error: continue`) is accepted for the action alone."""

    # abort: the run fails with this step's error; continue: the run goes on; retry: try again, then abort.
    action: Literal["abort", "continue", "retry"] = "abort"
    # retry: attempts after the first.
    retries: int = Field(3, ge=1, le=20)
    # retry: seconds before the first retry.
    delay: float = Field(0.5, ge=0)
    # retry: each wait is the previous one times this.
    multiplier: float = Field(2.0, ge=1)
    # retry: longest wait between two attempts.
    max_delay: float = Field(10.0, gt=0)

    @model_serializer(mode="wrap")
    def _unread_stays_absent(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Dumped and validated again (config/loading.py), the retry fields' defaults would come back as given.
        data = handler(self)
        if self.action != "retry" and isinstance(data, dict):
            for name in set(_RETRY_FIELDS) - self.model_fields_set:
                data.pop(name, None)
        return data


class StepConfig(_Strict):
    """One step. `tool` calls a tool once; `for_each` calls it once per item of `over` (the item is the
    template variable `item` names, its position `index`); `elicitation` asks the calling client's user
    (`message`, `requested_schema`; its output is `{action, content}`), waiting up to `timeout` (default
    `timeouts.input`). Templates are Jinja2 over `params`, `steps.<id>.output|status|error|content`
    (`content`: a tool step's result blocks when it returned more than text) and, in a `for_each`, the item; a string that is one `{{ expression }}` keeps the expression's type."""

    # Unique in the workflow; other steps read its result as `steps.<id>`.
    id: str = Field(pattern=STEP_ID_PATTERN)
    # tool: one call; for_each: one call per item of `over`; elicitation: asks the calling client's user.
    type: Literal["tool", "for_each", "elicitation"] = "tool"
    # The gateway's name of the tool to call (a backend tool, or another workflow).
    tool: str | None = None
    # The tool's arguments; strings are templates, at any depth.
    arguments: dict[str, Any] = Field(default_factory=dict)
    # A template: the step runs only when it is true; otherwise it is `skipped` with its `default_result`.
    condition: str | None = None
    # Steps that must finish first; steps without a path between them run in parallel.
    depends_on: list[str] = Field(default_factory=list)
    on_error: OnErrorConfig = Field(default_factory=OnErrorConfig)
    # Seconds one attempt (each item's, in a for_each) may take.
    timeout: float | None = Field(None, gt=0)
    # The step's output when it is skipped, or failed under `on_error: continue`; given (`null` included), it
    # stands in for a failed step, whose dependants then run.
    default_result: Any = None
    # for_each: a template giving the list to go over (a list, or a JSON array as a string).
    over: str | None = None
    # for_each: the template variable holding the current item (not params, steps or index: templates read those).
    item: str = Field("item", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # for_each: items called at once.
    max_parallel: int = Field(4, ge=1, le=64)
    # for_each: the most items it accepts; a longer list fails the step.
    max_iterations: int = Field(100, ge=1, le=10_000)
    # elicitation: what the user is asked (a template).
    message: str | None = None
    # elicitation: the form's JSON Schema (an object of flat string, number, integer, boolean or enum fields); an
    # accepted answer that does not fit it fails the step.
    requested_schema: dict[str, Any] | None = None
    # elicitation: the user declined: abort the run, continue (the step's output says `"action": "decline"`), or
    # skip_remaining: no step starts after it (each is `skipped`, with its `default_result`; running ones finish; one
    # waiting for a `max_parallel` slot, or a for_each item not yet started, does not start) and the run succeeds with the output of the steps that ran (its own says `"skipped": true`).
    on_decline: Literal["abort", "continue", "skip_remaining"] = "abort"
    # elicitation: the user dismissed the question: abort the run, continue, or skip_remaining (as `on_decline`).
    on_cancel: Literal["abort", "continue", "skip_remaining"] = "abort"

    @field_validator("on_error", mode="before")
    @classmethod
    def _action_alone(cls, value: Any) -> Any:
        return {"action": value} if isinstance(value, str) else value

    @property
    def has_default_result(self) -> bool:
        """Whether the config gives `default_result`: `default_result: null` is a result (JSON null) that
        stands in for a failed step; without one, the steps depending on a failed step are skipped."""
        return "default_result" in self.model_fields_set

    @model_serializer(mode="wrap")
    def _absent_default_result_stays_absent(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A config is dumped and validated again (discovered backends merged in, loading.py): an absent
        # `default_result` dumped as None would come back as an explicit null.
        data = handler(self)
        if isinstance(data, dict):
            # The same for the fields this step does not read: dumped at their defaults, they would come back
            # as given, which `unused_settings` warns of.
            unset = set(_UNUSED_FIELDS[self.type]) | ({"default_result"} if not self.has_default_result else set())
            for name in unset - self.model_fields_set:
                data.pop(name, None)
        return data

    def problems(self) -> list[str]:
        """What its type needs (checked by the workflow, so its graph problems are reported in the same pass)."""
        if self.type == "elicitation":
            return self._elicitation_problems()
        problems = [] if self.tool else [f"tool: a {self.type} step needs `tool`"]
        if self.type == "for_each" and not self.over:
            problems.append("over: a for_each step needs `over` (a template giving the list to go over)")
        if self.type == "tool" and self.over:
            problems.append("over: `over` is for for_each steps")
        if self.type == "for_each" and self.item in TEMPLATE_NAMES:
            # The item would hide that name from the step's templates (`item: index` lost the item itself).
            problems.append(f"item: '{self.item}' is a name templates already read ({', '.join(TEMPLATE_NAMES)})")
        problems += [
            f"{name}: `{name}` is for elicitation steps"
            for name in ("message", "requested_schema")
            if getattr(self, name) is not None
        ]
        return problems

    def _elicitation_problems(self) -> list[str]:
        problems = [
            f"{name}: an elicitation step takes no `{name}`" for name in ("tool", "over") if getattr(self, name)
        ]
        problems += ["arguments: an elicitation step takes no `arguments`"] if self.arguments else []
        problems += [] if self.message else ["message: an elicitation step needs `message` (what the user is asked)"]
        schema = self.requested_schema
        if schema is None:
            problems.append("requested_schema: an elicitation step needs `requested_schema` (the form)")
        elif schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
            problems.append("requested_schema: must be an object schema with `properties`")
        else:
            flat = ("string", "number", "integer", "boolean")
            problems += [
                f"requested_schema.properties.{name}: a form field must be a string, number, integer or boolean"
                for name, field in schema["properties"].items()
                if not isinstance(field, dict) or field.get("type") not in flat
            ]
            problems += schema_problems("requested_schema", schema)  # the run checks answers against it
        return problems

    def unused_settings(self) -> list[str]:
        """Fields given that this step's type or `on_error.action` never reads (`max_iterations` on a tool step,
        `retries` without `retry`): warned of, not refused, since a config that loaded before must still load."""
        problems = [
            f"{name}: `{name}` does nothing in a {self.type} step"
            for name in _UNUSED_FIELDS[self.type]
            if name in self.model_fields_set
        ]
        if self.type == "elicitation" and self.on_error.action == "retry":
            problems.append("on_error.action: an elicitation step is not retried (a person answered)")
        if self.on_error.action != "retry":
            problems += [
                f"on_error.{name}: `{name}` is read only with `action: retry`"
                for name in _RETRY_FIELDS
                if name in self.on_error.model_fields_set
            ]
        return problems


class WorkflowConfig(_Strict):
    """A composite tool: steps run as a graph (independent ones in parallel), each a call through the
    router, so policy, health checks and circuit breakers apply to every step. Served under `name` like
    any other tool: listed (optimizer off) or found by find_tool (optimizer on)."""

    # The tool's name; must not be a meta-tool's (find_tool, call_tool).
    name: str = Field(pattern=WORKFLOW_NAME_PATTERN)
    # What the workflow does: the tool's description, and what find_tool matches.
    description: str = Field(min_length=1)
    # The tool's input schema (JSON Schema, an object); `default`s of its properties fill missing arguments. One
    # that lists `properties` and leaves `additionalProperties` unset takes no other argument (a misspelt one is
    # refused, naming it).
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    # What it does, as a graph (each below, as `steps[]`).
    steps: list[StepConfig] = Field(min_length=1, max_length=200)
    # The result: each key a template over the steps' results; unset, the last step's output.
    output: dict[str, Any] | None = None
    # Per key of `output`, the value it takes when its template gives nothing: renders null or an empty string
    # (read from a step that was skipped or failed under `continue`), or fails on the data (an undefined field,
    # a filter's error; not a limit such as the run's deadline or work budget). Checked against the key's
    # `output_schema.properties` entry at load.
    output_defaults: dict[str, Any] = Field(default_factory=dict)
    # The result's JSON Schema (`type: object`), listed as the tool's `outputSchema` so clients and models know
    # its fields; every run's output is checked against it, and one that does not fit fails the run naming the
    # field. Unset: none listed, nothing checked.
    output_schema: dict[str, Any] | None = None
    # Seconds the whole run may take.
    timeout: float = Field(300.0, gt=0)
    # Steps (for_each items included) running at once.
    max_parallel: int = Field(8, ge=1, le=64)
    # Calls one run may make in all: every attempt of every step and for_each item, and the calls of
    # workflows it runs (which count against their own max_calls too); past it, the step fails. Unset:
    # 1,000, or what the workflow's own steps can make (max_iterations, retries) if that is more.
    max_calls: int | None = Field(None, ge=1, le=1_000_000)
    # MCP tool annotations, over those derived from the steps (read-only only if every step is, destructive
    # if any step is); a hint claiming more safety than a step's tool declares (`readOnlyHint: true` over a step
    # declared not read-only) is not served, and the gateway warns of it.
    annotations: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise ValueError(f"'{value}' is a meta-tool's name")
        return value

    @field_validator("parameters")
    @classmethod
    def _closed_unless_said(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Parameters listing their properties take no others unless `additionalProperties` says so: templates
        read only listed ones, so a misspelt argument (`tme` for `time`) was ignored and the run went on with
        the defaults. An empty `properties` (the default) stays open: its templates are not checked."""
        properties = value.get("properties")
        if isinstance(properties, dict) and properties and "additionalProperties" not in value:
            return {**value, "additionalProperties": False}
        return value

    @model_validator(mode="after")
    def _graph_and_templates(self) -> WorkflowConfig:
        """One `path: reason` line per problem, relative to this workflow (config.py prefixes its place)."""
        problems = _structure_problems(self.parameters, list(self.steps), self.output, self.output_schema, self.name)
        problems += output_default_problems(self.output_defaults, self.output, self.output_schema)
        if problems:
            raise ValueError("\n".join(problems))
        return self


class WorkflowRendersConfig(_Strict):
    """Workflow template renders running at once, each in a worker thread (workflows/renders.py): for the
    whole gateway, for one caller over all its runs, and for one run (its nested workflows' included). A
    freed slot goes to the waiting caller that holds fewest, so a caller with many runs cannot keep another
    waiting behind them. Needs per_run <= per_caller <= total."""

    # Renders at once for the whole gateway: the worker threads templates may take.
    total: int = Field(8, ge=1, le=64)
    # One caller's renders at once, over all its runs (keyed as rate limits key callers).
    per_caller: int = Field(4, ge=1, le=64)
    # One run's renders at once, its nested workflows' included (a for_each renders this many items at a time).
    per_run: int = Field(2, ge=1, le=64)

    @model_validator(mode="after")
    def _nested_bounds(self) -> WorkflowRendersConfig:
        """One line per bound out of order; config loading prefixes the section's place."""
        problems = []
        pairs = [
            ("per_run", self.per_run, "per_caller", self.per_caller),
            ("per_caller", self.per_caller, "total", self.total),
        ]
        if self.per_caller >= self.per_run > self.total:  # said too, or the line would name only per_caller
            pairs.append(("per_run", self.per_run, "total", self.total))
        for name, value, bound_name, bound in pairs:
            if value > bound:
                problems.append(
                    f"{name} ({value}{self._default_note(name)}) is more than {bound_name} "
                    f"({bound}{self._default_note(bound_name)}); the bounds must be per_run <= per_caller <= total"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _default_note(self, name: str) -> str:
        return "" if name in self.model_fields_set else ", the default"


def unchecked_workflow_problems(definition: Any) -> list[str]:
    """What `_graph_and_templates` finds in a workflow with a bad field, which pydantic then does not check,
    so that `vmcp validate` reports both in one pass: read from the raw definition, each step without its bad
    fields (their defaults instead); a step without a usable id is left out."""
    if not isinstance(definition, dict):
        return []
    parameters, output = definition.get("parameters"), definition.get("output")
    steps, output_schema = definition.get("steps"), definition.get("output_schema")
    return _structure_problems(
        parameters if isinstance(parameters, dict) else {},
        [_salvaged(step) for step in steps] if isinstance(steps, list) else [],
        output if isinstance(output, dict) else None,
        output_schema if isinstance(output_schema, dict) else None,
        definition.get("name") if isinstance(definition.get("name"), str) else None,
    )


def _salvaged(step: Any) -> StepConfig | None:
    if not isinstance(step, dict):
        return None
    try:
        return StepConfig.model_validate(step)
    except ValidationError as exc:
        bad = {error["loc"][0] for error in exc.errors() if error["loc"]}
    step_id = step.get("id")
    if not isinstance(step_id, str):
        return None
    kept = {key: value for key, value in step.items() if key not in bad}
    try:  # a bad id still names the step in the graph: validated as a stand-in, then put back
        return StepConfig.model_validate({**kept, "id": "salvaged"}).model_copy(update={"id": step_id})
    except ValidationError:
        return None


def _structure_problems(
    parameters: dict[str, Any],
    steps: list[StepConfig | None],
    output: dict[str, Any] | None,
    output_schema: dict[str, Any] | None = None,
    name: str | None = None,
) -> list[str]:
    """The workflow's own checks, by path relative to it; `None` stands for a step that could not be read.
    A template's problems also name the workflow (`name`) and the step."""
    problems = parameter_problems(parameters)
    if output_schema is not None:
        problems += output_schema_problems(output_schema, output)
    present = [(index, step) for index, step in enumerate(steps) if step is not None]
    ids = [step.id for _, step in present]
    problems += [f"steps: step ids must be unique, repeated: {i}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    known = set(ids)
    edges = {step.id: step.depends_on for _, step in present}
    for index, step in present:
        where = f"steps[{index}]"
        problems += [f"{where}.{problem}" for problem in step.problems()]
        problems += [f"{where}.depends_on: unknown step '{d}'" for d in step.depends_on if d not in known]
    cycle = find_cycle(edges)
    if cycle:
        problems.append(f"steps: depends_on forms a cycle: {' -> '.join(cycle)}")
    ancestors = ancestors_of(edges)
    for index, step in present:
        for place, source in step_templates(step):
            names, where = template_names(step, place), f"steps[{index}].{place}"
            owner = f"workflow '{name}', step '{step.id}'" if name else f"step '{step.id}'"
            problems += template_problems(where, source, ancestors[step.id], known, names, parameters, owner)
    for place, source in walk_strings(output or {}, "output"):
        owner = f"workflow '{name}', output" if name else "output"
        problems += template_problems(place, source, known, known, parameters=parameters, owner=owner)
    return problems


def output_default_problems(
    defaults: dict[str, Any], output: dict[str, Any] | None, schema: dict[str, Any] | None
) -> list[str]:
    """A default must stand for a key `output` makes, and fit what `output_schema` says of that key: a default
    that broke it would fail the very run it was meant to save, and only when a step failed."""
    if defaults and output is None:
        return ["output_defaults: defaults are for keys of `output`, which is unset"]
    properties = (schema or {}).get("properties")
    problems = []
    for key, value in defaults.items():
        if key not in (output or {}):
            problems.append(f"output_defaults.{key}: not a key of `output`")
            continue
        field = properties.get(key) if isinstance(properties, dict) else None
        if not isinstance(field, dict):
            continue
        try:
            jsonschema.validators.validator_for(field, jsonschema.Draft202012Validator)(field).validate(value)
        except jsonschema.ValidationError as exc:
            problems.append(f"output_defaults.{key}: does not fit output_schema.properties.{key}: {exc.message}")
        except jsonschema.SchemaError:  # said by output_schema's own check
            continue
    return problems


def env_reference_warnings(workflows: Sequence[WorkflowConfig]) -> list[str]:
    """`${VAR}` written in a step's templates (arguments, message, condition, over), where nothing expands it
    (only backend fields are expanded, at load): one line per place, naming the workflow, the step, the path
    and the reference. A warning, not a problem: the text may be meant literally."""
    warnings = []
    for workflow in workflows:
        for step in workflow.steps:
            for place, source in step_templates(step):
                for name in dict.fromkeys(ENV_REFERENCE.findall(source)):
                    field = place.removeprefix("arguments.")
                    where = f"argument '{field}'" if field != place else f"field '{place}'"
                    warnings.append(
                        f"workflow '{workflow.name}' step '{step.id}' {where} contains ${{{name}}}: environment "
                        "variables are not expanded in workflow steps (pass the value as a parameter, "
                        f"{{{{ params.{name.lower()} }}}}, or give it to the backend in its `env` or `headers`, "
                        f"where ${{{name}}} is expanded)"
                    )
    return warnings


def unused_setting_warnings(workflows: Sequence[WorkflowConfig]) -> list[str]:
    """Settings given that their step never reads, by path (`workflows[0].steps[1].max_iterations: ...`)."""
    return [
        f"workflows[{w}].steps[{s}].{unused}"
        for w, workflow in enumerate(workflows)
        for s, step in enumerate(workflow.steps)
        for unused in step.unused_settings()
    ]


def workflow_warnings(workflows: Sequence[WorkflowConfig]) -> list[str]:
    """What `vmcp validate` and a start warn of in the workflows: valid, but probably not what was meant (a step
    calling a workflow that asks its user included)."""
    return (
        env_reference_warnings(workflows) + unused_setting_warnings(workflows) + nested_ask_warnings(_shapes(workflows))
    )


def check_workflows(workflows: list[WorkflowConfig]) -> list[str]:
    """Across workflows (config/workflow_calls.py): unique names, no workflow reaching itself through its steps'
    tools, and each call of a workflow by another's step possible as written."""
    return across_workflow_problems(_shapes(workflows))


def _shapes(workflows: Sequence[WorkflowConfig]) -> list[Workflow]:
    return [(w.name, w.parameters, [(s.id, s.type, s.tool, s.arguments) for s in w.steps]) for w in workflows]


__all__ = ["check_workflows", "raw_workflow_problems", "repeated_workflow_names"]
