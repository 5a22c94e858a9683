"""The graph and template analysis behind the workflow checks of config/workflows.py: a step's templates and
the steps they read, `depends_on` cycles and ancestors, a parameter schema's validity. Pure functions over
the parsed definitions; the models and the messages' paths stay in config/workflows.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jinja2.nodes
import jsonschema

from vmcp_opt.config.template_checks import name_problems, parameter_read_problems, parse

if TYPE_CHECKING:
    from vmcp_opt.config.workflows import StepConfig

# What every template reads; a for_each's arguments read its item (named by `item`) and `index` too.
BASE_NAMES = frozenset({"params", "steps"})
_ITEM_NOTE = "`item` is a for_each step's current item, read in its `arguments` only"


def parameter_problems(schema: dict[str, Any]) -> list[str]:
    if schema.get("type", "object") != "object":
        return ["parameters.type: a tool's input schema must be of type 'object'"]
    return schema_problems("parameters", schema)


def output_schema_problems(schema: dict[str, Any], output: dict[str, Any] | None) -> list[str]:
    """What is wrong with a workflow's `output_schema` that the file alone shows: not an object schema (MCP
    lists only those as `outputSchema`), not JSON Schema, or, with `output` given (whose keys are the result's
    keys, whatever the steps return), a required key `output` does not make or a key the schema forbids."""
    if schema.get("type") != "object":
        return ["output_schema.type: a tool's output schema must be of type 'object'"]
    problems = schema_problems("output_schema", schema)
    if problems or output is None:
        return problems
    required = schema.get("required", [])
    problems += [
        f"output_schema.required: '{key}' is not a key of `output`, so no run could return it"
        for key in required
        if isinstance(key, str) and key not in output
    ]
    properties = schema.get("properties", {})
    if schema.get("additionalProperties") is False and isinstance(properties, dict):
        problems += [
            f"output.{key}: not among output_schema.properties, which allows no other key (additionalProperties)"
            for key in output
            if key not in properties
        ]
    return problems


def schema_problems(place: str, schema: dict[str, Any]) -> list[str]:
    """`place.path: not a valid JSON Schema: …`, or nothing."""
    try:
        jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        return [f"{place}{where}: not a valid JSON Schema: {exc.message}"]
    return []


def step_templates(step: StepConfig) -> Iterator[tuple[str, str]]:
    yield from walk_strings(step.arguments, "arguments")
    if step.message is not None:
        yield "message", step.message
    if step.condition is not None:
        yield "condition", step.condition
    if step.over is not None:
        yield "over", step.over


def walk_strings(value: Any, place: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield place, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from walk_strings(item, f"{place}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk_strings(item, f"{place}[{index}]")


def template_names(step: StepConfig, place: str) -> frozenset[str]:
    """What the run gives a template of `step` at `place`: a for_each's item and index in its arguments only
    (its `over` and `condition` are rendered once, before any item)."""
    if step.type == "for_each" and place.startswith("arguments"):
        return BASE_NAMES | {step.item, "index"}
    return BASE_NAMES


def template_problems(
    place: str,
    source: str,
    readable: set[str],
    known: set[str],
    names: frozenset[str] = BASE_NAMES,
    parameters: dict[str, Any] | None = None,
    owner: str = "",
) -> list[str]:
    """What keeps the template from rendering on any run: it does not compile in the runtime's sandbox, reads
    a name the run does not give it here (`names`) or a parameter the schema cannot carry, or reads a step
    that is unknown or not among its dependencies (`readable`). `owner` names the workflow and step."""
    tree, error = parse(source)
    owned = f" ({owner})" if owner else ""
    if tree is None:  # a syntax error reads as it always has; an unknown filter or test names its owner
        return [f"{place}: {error}" + ("" if str(error).startswith("template syntax error") else owned)]
    reads, unnamed = _step_reads(tree)  # first: finding undeclared names compiles the tree, folding constants
    note = _ITEM_NOTE if "item" not in names else ""
    found = name_problems(tree, names, note) + parameter_read_problems(tree, parameters or {})
    problems = [f"{place}: {problem}{owned}" for problem in found]
    if unnamed and readable != known:  # the output reads every step, all finished: any way of reading is fine
        problems.append(
            f"{place}: reads {unnamed[0]}, which does not name a step; write steps.<id> or steps['<id>'] so "
            "that the step can be checked against depends_on"
        )
    for step in reads:
        if step not in known:
            problems.append(f"{place}: unknown step '{step}'")
        elif step not in readable:
            problems.append(
                f"{place}: reads step '{step}', which is not in depends_on (directly or through another step)"
            )
    return problems


_MAPPING_ATTRIBUTES = frozenset(dir(dict))  # `steps.get`: Jinja gives the dict's method, not a step "get"


def _step_reads(tree: jinja2.nodes.Node) -> tuple[list[str], list[str]]:
    """From a parsed template: the step ids it reads by name (`steps.a`, `steps['a']`, in order), and the
    ways it reads `steps` without naming a step (`steps[x ~ y]`, `steps.get('a')`, `steps` itself)."""
    named: list[str] = []
    unnamed: list[str] = []

    def visit(node: jinja2.nodes.Node, parent: jinja2.nodes.Node | None) -> None:
        if isinstance(node, jinja2.nodes.Name) and node.name == "steps" and node.ctx == "load":
            if isinstance(parent, jinja2.nodes.Getattr) and parent.attr not in _MAPPING_ATTRIBUTES:
                named.append(parent.attr)
            elif isinstance(parent, jinja2.nodes.Getitem) and parent.node is node and _constant_key(parent.arg):
                named.append(parent.arg.value)  # type: ignore[attr-defined]
            elif isinstance(parent, jinja2.nodes.Getattr):
                unnamed.append(f"`steps.{parent.attr}`")
            else:
                unnamed.append("`steps[...]`" if isinstance(parent, jinja2.nodes.Getitem) else "`steps` as a whole")
        for child in node.iter_child_nodes():
            visit(child, node)

    visit(tree, None)
    return list(dict.fromkeys(named)), unnamed


def _constant_key(node: jinja2.nodes.Node) -> bool:
    return isinstance(node, jinja2.nodes.Const) and isinstance(node.value, str)


def find_cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """Every cycle the depth-first search meets (one per edge back onto the path), each once."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    done: set[str] = set()
    for root in edges:
        cycle = find_cycle({k: v for k, v in edges.items() if k not in done}, root)
        while cycle:
            if frozenset(cycle) not in seen:
                seen.add(frozenset(cycle))
                found.append(cycle)
            # Cut the edge that closed it and look again: the other cycles through these nodes remain.
            edges = {**edges, cycle[-2]: [t for t in edges[cycle[-2]] if t != cycle[-1]]}
            cycle = find_cycle({k: v for k, v in edges.items() if k not in done}, root)
        done.add(root)
    return found


def find_cycle(edges: dict[str, list[str]], start: str | None = None) -> list[str]:
    """One cycle of the graph as a path that ends where it starts, or [] (iterative depth-first search);
    with `start`, one reachable from it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in [start] if start is not None else edges:
        if state.get(root):
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(edges.get(root, [])))]
        state[root] = 1
        path.append(root)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(edges.get(child, []))))
    return []


def ancestors_of(edges: dict[str, list[str]]) -> dict[str, set[str]]:
    """Every step each step waits for, directly or through others (the graph is acyclic here)."""
    found: dict[str, set[str]] = {}

    def visit(node: str) -> set[str]:
        if node not in found:
            found[node] = set()
            for parent in edges.get(node, []):
                found[node] |= {parent, *visit(parent)}
        return found[node]

    for node in edges:
        visit(node)
    return found
