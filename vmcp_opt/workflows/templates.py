"""Templates of workflow steps: Jinja2 in a sandbox, over `params`, `steps.<id>` and a for_each's item.

A string that is one `{{ expression }}` and nothing else evaluates to the expression's value with its type
(a list stays a list, a number a number), so `arguments: {count: "{{ params.n }}"}` passes an integer. Any
other string renders to a string. Undefined names fail (`StrictUndefined`): a typo is an error naming the
step, not an empty argument. `tojson` (Jinja's own) and `fromjson` are available as filters.

Sandboxed because a config may come from someone other than the operator of the gateway, and templates
read backend output: no attribute access to internals, no calling unsafe methods.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.exceptions
from jinja2.sandbox import SandboxedEnvironment

_ONE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expression>(?:(?!\}\}|\{\{).)*)\}\}\s*$", re.S)


class TemplateError(Exception):
    """A template that failed to render: `place` is where it sits in the step (`arguments.path`)."""

    def __init__(self, place: str, reason: str) -> None:
        super().__init__(f"{place}: {reason}")
        self.place = place
        self.reason = reason


def _fromjson(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


# Templates render on the event loop: `'x' * 10**9` or `10 ** 10**8` must fail, not stall the gateway.
MAX_REPEATED = 1_000_000


class _Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 1000:
            raise jinja2.exceptions.SecurityError(f"exponent {right} is too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > MAX_REPEATED:
                    raise jinja2.exceptions.SecurityError(f"repeating gives more than {MAX_REPEATED:,} items")
        return super().call_binop(context, operator, left, right)


_ENVIRONMENT = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False)
_ENVIRONMENT.filters["fromjson"] = _fromjson


@lru_cache(maxsize=2048)
def _expression(source: str) -> Any:
    return _ENVIRONMENT.compile_expression(source, undefined_to_none=False)


@lru_cache(maxsize=2048)
def _template(source: str) -> jinja2.Template:
    return _ENVIRONMENT.from_string(source)


def render_value(value: Any, context: dict[str, Any], place: str) -> Any:
    """`value` with every string in it rendered; dicts and lists are walked, other values kept."""
    if isinstance(value, str):
        return render_string(value, context, place)
    if isinstance(value, dict):
        return {key: render_value(item, context, f"{place}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, context, f"{place}[{index}]") for index, item in enumerate(value)]
    return value


def render_string(source: str, context: dict[str, Any], place: str) -> Any:
    if "{{" not in source and "{%" not in source:
        return source
    try:
        match = _ONE_EXPRESSION.match(source)
        if match is not None:
            result = _expression(match.group("expression"))(**context)
            if isinstance(result, jinja2.Undefined):
                str(result)  # raises the undefined error, with its name
            return result
        return _template(source).render(**context)
    except jinja2.TemplateError as exc:
        raise TemplateError(place, f"{type(exc).__name__}: {exc}") from None
    except (ValueError, TypeError, ArithmeticError, LookupError) as exc:  # raised by a filter (fromjson, int)
        raise TemplateError(place, f"{type(exc).__name__}: {exc}") from None


def truthy(value: Any) -> bool:
    """A condition's value: a rendered string 'false', 'no', '0' or '' is false, like the value it prints."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "0", "none", "null")
    return bool(value)
