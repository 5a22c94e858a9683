"""What a workflow template reads, checked at load against what the run gives it at that place: templates
compiled in a sandbox with the runtime's names (workflows/templates.py builds its environment from
`ADDED_FILTERS` and `REMOVED_GLOBALS`), so an unknown filter or test, `lipsum`, a name the run does not
provide (`param.name`, `item` outside a for_each's arguments) or a parameter the schema cannot carry is a
problem naming the place, not a step that fails every run. Parsed with a plain `jinja2.Environment` before,
these loaded, and each run failed. config/ imports nothing else of the package, hence the shared names here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes
from jinja2.sandbox import SandboxedEnvironment

from vmcp_opt.config.suggestions import closest

# What the runtime's sandbox has beyond Jinja's own filters (`fromjson`), the globals it takes away (`lipsum`:
# 45 MB of text on request), and the operators it calls through its bounds, which Jinja then never folds into
# constants when it compiles (`{{ 'x' * 10**9 }}` would be computed here, at load).
ADDED_FILTERS = frozenset({"fromjson"})
REMOVED_GLOBALS = frozenset({"lipsum"})
INTERCEPTED_BINOPS = frozenset({"+", "-", "*", "/", "//", "%", "**"})
# Filters and tests that read a possibly missing name without failing: a template using one may read a
# parameter its schema does not declare.
_GUARDS = frozenset({"default", "d"})
_GUARD_TESTS = frozenset({"defined", "undefined", "none"})


class _CheckingSandbox(SandboxedEnvironment):
    intercepted_binops = INTERCEPTED_BINOPS


def checking_environment() -> SandboxedEnvironment:
    """A sandbox with the runtime's filter, test and global names, for compiling only: each filter a stand-in
    that refuses to run, since Jinja calls a filter of constants as it compiles (`'x' | center(10**9)`, folded,
    would make a GB here), and a refusal leaves the call to run time."""
    environment = _CheckingSandbox(undefined=jinja2.StrictUndefined, autoescape=False)
    for name in REMOVED_GLOBALS:
        environment.globals.pop(name, None)
    environment.filters = {name: _never_run for name in (*environment.filters, *ADDED_FILTERS)}
    return environment


def _never_run(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("templates are compiled at load, not rendered")


_CHECKING = checking_environment()


def parse(source: str) -> tuple[jinja2.nodes.Template | None, str | None]:
    """The template's tree, or why it does not compile: a syntax error, an unknown filter or test."""
    try:
        tree = _CHECKING.parse(source)
        _CHECKING.compile(source)  # a tree of its own: compiling folds constants in place (`steps['a' ~ '']`)
    except jinja2.TemplateAssertionError as exc:  # "No filter named 'lenght'."
        return None, f"{exc.message}{_known_hint(exc.message or '')}"
    except jinja2.TemplateSyntaxError as exc:
        return None, f"template syntax error: {exc.message}"
    unknown = _unknown_filter_or_test(tree)  # inside `{% if %}`, Jinja's compiler leaves them to run time
    return (None, f"{unknown}{_known_hint(unknown)}") if unknown else (tree, None)


def _unknown_filter_or_test(tree: jinja2.nodes.Template) -> str | None:
    for node in tree.find_all((jinja2.nodes.Filter, jinja2.nodes.Test)):
        kind, known = (
            ("filter", _CHECKING.filters) if isinstance(node, jinja2.nodes.Filter) else ("test", _CHECKING.tests)
        )
        if node.name not in known:
            return f"No {kind} named '{node.name}'."
    return None


def _known_hint(message: str) -> str:
    for kind, known in (("filter", _CHECKING.filters), ("test", _CHECKING.tests)):
        prefix = f"No {kind} named '"
        if message.startswith(prefix):
            name = message[len(prefix) :].split("'", 1)[0]
            near = closest(name, known)
            return f" (did you mean '{near[0]}'?)" if near else ""
    return ""


def name_problems(tree: jinja2.nodes.Template, names: Iterable[str], item_note: str = "") -> list[str]:
    """The names the template reads that the run does not give it here (`names`, and the sandbox's globals)."""
    given = set(names)
    unknown = sorted(jinja2.meta.find_undeclared_variables(tree) - given - set(_CHECKING.globals))
    problems = []
    for name in unknown:
        near = closest(name, given)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        if name == "lipsum":
            hint = "; `lipsum` is not available to workflow templates"
        elif name == "item" and item_note:
            hint = f"; {item_note}"
        have = ", ".join(f"`{n}`" for n in sorted(given))
        problems.append(f"reads `{name}`, which templates here do not have (they have {have}){hint}")
    return problems


def parameter_read_problems(tree: jinja2.nodes.Template, parameters: dict[str, Any]) -> list[str]:
    """`params.<name>` read without a guard (`default`, `is defined`) where the parameter schema lists its
    properties, not that one, and does not say it takes others: the tool's input schema tells clients what to
    pass, so every run fails there (StrictUndefined). A schema listing none (the default) is not checked."""
    properties = parameters.get("properties")
    if not isinstance(properties, dict) or not properties or _open(parameters) or _guarded(tree):
        return []
    problems = []
    for name in _parameters_read(tree):
        if name not in properties:
            near = closest(name, [p for p in properties if isinstance(p, str)])
            hint = f"; did you mean '{near[0]}'?" if near else ""
            problems.append(f"reads params.{name}, which is not among the parameters' properties{hint}")
    return problems


def _open(parameters: dict[str, Any]) -> bool:
    """Whether the schema lets a caller pass properties it does not list."""
    extra = parameters.get("additionalProperties")
    return (extra is not None and extra is not False) or bool(parameters.get("patternProperties"))


def _guarded(tree: jinja2.nodes.Template) -> bool:
    return any(f.name in _GUARDS for f in tree.find_all(jinja2.nodes.Filter)) or any(
        t.name in _GUARD_TESTS for t in tree.find_all(jinja2.nodes.Test)
    )


_MAPPING_ATTRIBUTES = frozenset(dir(dict))  # `params.get`, `params.items`: the dict's methods


def _parameters_read(tree: jinja2.nodes.Template) -> list[str]:
    """The parameter names read as `params.x` or `params['x']`, in order, once each."""
    read: list[str] = []
    for node in tree.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
        if isinstance(node, jinja2.nodes.Getattr) and _is_params(node.node) and node.attr not in _MAPPING_ATTRIBUTES:
            read.append(node.attr)
        elif isinstance(node, jinja2.nodes.Getitem) and _is_params(node.node) and _constant_text(node.arg):
            read.append(node.arg.value)  # type: ignore[attr-defined]  # a Const, `_constant_text` says
    return list(dict.fromkeys(read))


def _is_params(node: jinja2.nodes.Node) -> bool:
    return isinstance(node, jinja2.nodes.Name) and node.name == "params" and node.ctx == "load"


def _constant_text(node: jinja2.nodes.Node) -> bool:
    return isinstance(node, jinja2.nodes.Const) and isinstance(node.value, str)
