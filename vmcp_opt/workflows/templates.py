"""Templates of workflow steps: Jinja2 in a sandbox, over `params`, `steps.<id>` and a for_each's item.

A string that is one `{{ expression }}` and nothing else evaluates to the expression's value with its type
(a list stays a list, a number a number), so `arguments: {count: "{{ params.n }}"}` passes an integer; what
is not yet JSON data becomes it (a generator, view or range a list: `_json_data`), and what JSON cannot carry
fails the render (a non-finite float, an integer of more than 4,300 digits: no backend could read a request
holding one, and its run waited for its timeout). Any other string renders to a string. Undefined names fail
(`StrictUndefined`): a typo is an error naming the step, not an empty argument. `tojson` (Jinja's own) and
`fromjson` are available as filters. A step's output kept as its JSON text (step_results.py, `KeptText`) renders
as that text, and any other use of it (an item, a field, its length, a loop, a filter but `string` and `default`)
fails naming the step, its values and the setting: read as a str, `[0]` gave `[` and `| length` its characters.

Sandboxed because a config may come from someone other than the operator of the gateway, and templates
read backend output and client arguments: no attribute access to internals, no calling unsafe methods.

Bounded, because a template can ask for work without end (`10 ** 10**8`, `'x'|center(10**9)`, nested
loops). The executor renders off the event loop (a worker thread), and each render here carries a
`_Budget` of work and a deadline:
- one operation may not produce more than `MAX_SIZE` characters or items, nor an integer product or power of
  more than `MAX_INT_BITS` bits (two 100,000-bit integers multiply in ~2.5 ms, two of 500,000 bits in 30-70 ms,
  all of it holding the GIL, past every clock's look): checked *before* it runs (`*`, `**`, `%`, widths in format
  specs, the width and count arguments of `center`, `ljust`, `indent`, `batch`, `slice`, `tojson(indent)`, …);
  integer division (`//`, `%`, `/`, `round` to tens) takes operands of at most `MAX_DIVISION_BITS` bits, as its
  cost grows with the square of their size (a 1M-bit `//` held the GIL for ~0.4 s, past every clock's look);
- everything a render produces (operators, `~`, calls, filters, output) and every line of template code it
  runs counts against `MAX_WORK`, so a loop that grows a value step by step stops too;
- a filter's own loop runs out of the clocks' sight (`urlize` on 3 MB computed 14 s past them), so a costly
  filter's worst case, known from its input and arguments, is charged before it runs, and refused past what
  the render has left or what one call may take (filter_costs.py);
- the clocks (the run's deadline, the render's own allowance of `MAX_RENDER_SECONDS` of its thread's CPU time,
  and the run's cancellation) are looked at on every arithmetic operator, call and filter, and every
  `_DEADLINE_EVERY` lines of template code (a trace function on `<template>` frames only). CPU time, not
  wall-clock time: renders share one GIL, and the machine's other work, so a render's wall time is what
  everything else costs too.
`lipsum` is gone (45 MB of text on request). A refusal is a `TemplateError` naming the place, as is every
other exception a render raises (a filter's `AttributeError` on a value of the wrong type, `MemoryError`, a
recursive macro's `RecursionError`): a template's failure is its step's, never its run's crash.

Past ~450 lines on purpose: the sandbox, its bounds and the typed evaluation share one environment and its
limits; apart, each would reach into the others' state.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from functools import lru_cache, update_wrapper, wraps
from types import FrameType
from typing import Any

import jinja2
import jinja2.exceptions
import jinja2.nodes
import jinja2.runtime
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import SandboxedEnvironment, SandboxedFormatter
from markupsafe import Markup

from vmcp_opt.config.template_checks import INTERCEPTED_BINOPS, REMOVED_GLOBALS
from vmcp_opt.workflows.filter_costs import charge_filter, joined_size, percent_fields, replaced_size
from vmcp_opt.workflows.step_results import TOO_WIDE, KeptText, KeptTextRead, too_wide

_ONE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expression>(?:(?!\}\}|\{\{).)*)\}\}\s*$", re.S)

# Most characters or items one operation may produce (`'x' * n`, a width, `batch(n)`).
MAX_SIZE = 1_000_000
MAX_REPEATED = MAX_SIZE  # the name earlier code used
# Largest product or power of integers, in bits: its cost grows faster than its size (Karatsuba's n^1.58), and one
# operation holds the GIL until it ends, so it is kept to a few ms (`9 ** 1000 ** 1000` would take hours).
MAX_INT_BITS = 200_000
# Largest integer operand of `//`, `%`, `/` (and `round` to tens), in bits: ~30,000 digits, ~4 ms at worst.
MAX_DIVISION_BITS = 100_000
# What one render may spend: characters and items produced, plus one per line of template code run.
MAX_WORK = 20_000_000
# Most CPU time one render may spend (its thread's), whatever the run's own deadline.
MAX_RENDER_SECONDS = 5.0
_DEADLINE_EVERY = 1024  # lines of template code between two looks at the clocks
_CPU_LOOK_EVERY = 0.01  # seconds of wall time between two reads of the render's CPU time

SecurityError = jinja2.exceptions.SecurityError


class TemplateError(Exception):
    """A template that failed to render: `place` is where it sits in the step (`arguments.path`). `limit`: a
    bound stopped it (work, deadline, cancellation, a kept text, memory, depth), not its data, so an output
    field's default must not hide it."""

    def __init__(self, place: str, reason: str, limit: bool = False) -> None:
        super().__init__(f"{place}: {reason}")
        self.place = place
        self.reason = reason
        self.limit = limit


class _Budget:
    """One render's allowance: work units left, CPU time (`MAX_RENDER_SECONDS` of its thread's), the run's
    deadline (time.monotonic, or None) and a stop signal (set when the run waiting for it is cancelled: the
    render ends then, and gives back its thread's slot). CPU time: a wall-clock cap would also count the time
    the render waits for the GIL other renders hold, or for a core of a busy machine, and fail cheap renders."""

    def __init__(self, deadline: float | None, stop: threading.Event | None = None) -> None:
        self.deadline = deadline
        self.cpu_deadline = time.thread_time() + MAX_RENDER_SECONDS
        self.stop = stop
        self.left = MAX_WORK
        self.lines = 0
        self.next_cpu_look = 0.0  # time.monotonic

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise SecurityError(f"the template does more than {MAX_WORK:,} units of work (characters, items, lines)")

    def line(self) -> None:
        self.spend(1)
        self.lines += 1
        if self.lines % _DEADLINE_EVERY == 0:
            self.check_clocks()

    def check_clocks(self) -> None:
        """A look at the clocks and the stop signal, made on every operator: the thread's CPU time (a syscall,
        ~0.4 µs) is read only once `_CPU_LOOK_EVERY` of wall time has passed, as it cannot grow faster."""
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise SecurityError("the template ran past its deadline")
        if self.stop is not None and self.stop.is_set():
            raise SecurityError("the template's run was cancelled")
        if now >= self.next_cpu_look:
            self.next_cpu_look = now + _CPU_LOOK_EVERY
            if time.thread_time() > self.cpu_deadline:
                raise SecurityError(f"the template computed for more than {MAX_RENDER_SECONDS:g}s")


_current = threading.local()  # `.budget`: the render running in this thread


def _spend(units: int) -> None:
    budget: _Budget | None = getattr(_current, "budget", None)
    if budget is not None:
        budget.spend(units)


def _size(value: Any) -> int:
    """What a value costs to make, shallowly: its length, or 1."""
    return len(value) if isinstance(value, str | bytes | list | tuple | dict | set) else 1


def _too_large(what: str, size: int, cap: int = MAX_SIZE) -> None:
    if size > cap:
        raise SecurityError(f"{what} gives more than {cap:,} characters or items")


# --- operators --------------------------------------------------------------------------------------


def _check_power(left: Any, right: Any) -> None:
    if isinstance(right, int | float) and abs(right) > 1000:
        raise SecurityError(f"exponent {right} is too large")
    bits = max(abs(left).bit_length(), 1) * right if isinstance(left, int) and isinstance(right, int) else 0
    if bits > MAX_INT_BITS:
        raise SecurityError(
            f"the power has more than {MAX_INT_BITS:,} bits, the most an integer product or power may have"
        )


def _check_division(operator: str, *operands: Any) -> None:
    """Integer division costs the product of its operands' sizes (CPython's is schoolbook): refused past
    `MAX_DIVISION_BITS` before it runs. Floats cost nothing (a huge int mixed in overflows at once)."""
    for operand in operands:
        if isinstance(operand, int) and abs(operand).bit_length() > MAX_DIVISION_BITS:
            raise SecurityError(
                f"`{operator}` on an integer of {abs(operand).bit_length():,} bits: integer division takes "
                f"operands of at most {MAX_DIVISION_BITS:,} bits"
            )


def _check_repeat(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
            raise SecurityError(
                f"the product has more than {MAX_INT_BITS:,} bits, the most an integer product or power may have"
            )
        return
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int):
            _too_large("repeating", len(seq) * times)
            _spend(len(seq) * max(times, 0))


def _check_percent(form: str, args: Any) -> None:
    """`'%10d' % x`: no width or precision past MAX_SIZE, written or given as `*`."""
    values = args if isinstance(args, tuple) else (args,)
    for width, precision in percent_fields(form):
        for part in (width, precision):
            if part == "*":
                if any(isinstance(v, int) and abs(v) > MAX_SIZE for v in values):
                    raise SecurityError(f"a width or precision past {MAX_SIZE:,}")
            elif part and int(part) > MAX_SIZE:
                raise SecurityError(f"width or precision {part} is past {MAX_SIZE:,}")
    _spend(len(form) + sum(_size(v) for v in values))


_SPEC_NUMBER = re.compile(r"\d+")


class _BoundedFormatter(SandboxedFormatter):
    """`str.format`'s fields, with their (already substituted) format specs checked."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        for number in _SPEC_NUMBER.findall(format_spec):
            if len(number) > 7 or int(number) > MAX_SIZE:
                raise SecurityError(f"format spec '{format_spec[:20]}' asks for more than {MAX_SIZE:,} characters")
        _spend(_size(value))
        return super().format_field(value, format_spec)


# --- calls of methods and filters -------------------------------------------------------------------

# A method of str (or int) whose arguments say how much it produces: the arguments that do.
_WIDTH_METHODS = {"ljust": 0, "rjust": 0, "center": 0, "zfill": 0, "expandtabs": 0, "to_bytes": 0}
_WIDTH_FILTERS = {"center": "width", "indent": "width", "batch": "linecount", "slice": "slices", "tojson": "indent"}


def _check_width(name: str, value: Any) -> None:
    if isinstance(value, int) and value > MAX_SIZE:
        raise SecurityError(f"{name}: {value} is past the largest size a template may ask for ({MAX_SIZE:,})")


def _estimate_method(owner: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """What a call of `owner.name(*args)` produces, at most, before it runs."""
    if name in _WIDTH_METHODS:
        for value in (*args, *kwargs.values()):
            _check_width(name, value)
    if isinstance(owner, str) and name == "join" and args:
        return joined_size(owner, args[0])
    if isinstance(owner, str) and name == "replace" and len(args) >= 2:
        return replaced_size(owner, args[0], args[1])
    if isinstance(owner, str) and name == "translate" and args and isinstance(args[0], dict):
        longest = max((_size(v) for v in args[0].values()), default=1)
        return len(owner) * max(longest, 1)
    return _size(owner) + sum(_size(v) for v in (*args, *kwargs.values()))


_PASSED = (jinja2.runtime.Context, jinja2.nodes.EvalContext, jinja2.Environment)  # what pass_* filters get first
# The filters that take a `KeptText` whole: `string` gives its text, `default` the value itself.
_WHOLE_VALUE_FILTERS = frozenset({"string", "default", "d"})


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` with its width argument checked, what it is given counted, and its worst case charged first
    (filter_costs.py: a filter's own loop runs past every look at the clocks) (pass_* markers kept)."""
    width = _WIDTH_FILTERS.get(name)

    @wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        values = [a for a in args if not isinstance(a, _PASSED)]
        if values and isinstance(values[0], KeptText) and name not in _WHOLE_VALUE_FILTERS:
            values[0].refuse(f"apply the filter '{name}' to")
        budget: _Budget | None = getattr(_current, "budget", None)
        if budget is not None:  # inline: a function for it would cost a trace event (~1 µs) per item of a `map`
            budget.check_clocks()
        if width is not None:
            _check_width(f"{name}({width})", kwargs.get(width, values[1] if len(values) > 1 else None))
        if budget is not None:
            budget.spend(charge_filter(name, values, kwargs, budget.left))  # its worst case, before it runs
        if name == "round" and values:  # to tens (a negative precision) is a division of the value
            _check_division("round", values[0])
        if name == "join" and values:
            _spend(joined_size(str(values[1]) if len(values) > 1 else "", values[0]))
        elif name == "replace" and len(values) >= 3 and isinstance(values[0], str):
            _spend(replaced_size(values[0], values[1], values[2]))
        elif name == "format" and values and isinstance(values[0], str):
            _check_percent(values[0], tuple(values[1:]) or tuple(kwargs.values()))
        elif name == "sum" and values and isinstance(values[0], list | tuple):
            _spend(sum(_size(v) for v in values[0]))
        _spend(sum(_size(v) for v in values))
        return function(*args, **kwargs)

    return bounded


class _Generator(CodeGenerator):
    """Jinja's compiler, with `a ~ b` made through `environment.bounded_concat` (counted, like `+`), and
    constants folded to non-finite floats written as code that makes them (Jinja writes `inf`, an unknown
    name: `{{ 1e999 }}` and `{{ 'nan' | float }}` failed with a NameError)."""

    def visit_Const(self, node: jinja2.nodes.Const, frame: Frame) -> None:
        self.write(_constant_code(node.as_const(frame.eval_ctx)))

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


def _constant_code(value: Any) -> str:
    """Python source for a folded constant (a value `has_safe_repr` accepts), as Jinja writes it but for the
    non-finite floats, at any depth of a folded tuple, list, set or dict."""
    if isinstance(value, float):
        return str(value) if math.isfinite(value) else f"float('{value}')"
    if isinstance(value, tuple | list | set | frozenset) and value:
        items = ", ".join(_constant_code(item) for item in value)
        return f"({items},)" if isinstance(value, tuple) else f"{type(value).__name__}([{items}])"
    if isinstance(value, dict) and value:
        return "{" + ", ".join(f"{_constant_code(k)}: {_constant_code(v)}" for k, v in value.items()) + "}"
    return repr(value)


class _Sandbox(SandboxedEnvironment):
    code_generator_class = _Generator
    # Every binary arithmetic operator: each is a look at the clocks, and each is bounded before it runs.
    intercepted_binops = INTERCEPTED_BINOPS

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget: _Budget | None = getattr(_current, "budget", None)
        if budget is not None:  # inline (also in `call`, filters): a function would cost a trace event, ~1 µs
            budget.check_clocks()
        if operator in ("//", "/") or (operator == "%" and not isinstance(left, str)):
            _check_division(operator, left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_repeat(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_percent(left, right)
        elif operator == "+":
            _spend(_size(left) + _size(right))
        return self.binop_table[operator](left, right)  # SandboxedEnvironment.call_binop's whole body

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # Jinja's signature
        target = getattr(__obj, "__wrapped__", __obj)  # str.format arrives wrapped by the sandbox
        owner, name = getattr(target, "__self__", None), getattr(target, "__name__", "")
        if owner is not None and not isinstance(owner, type(sys)):
            _spend(_estimate_method(owner, name, args, kwargs))
        else:
            _spend(1 + sum(_size(v) for v in (*args, *kwargs.values())))
        budget: _Budget | None = getattr(_current, "budget", None)
        if budget is not None:
            budget.check_clocks()
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `format_map`, through a formatter that checks each field's width first."""
        if super().wrap_str_format(value) is None or isinstance(value.__self__, Markup):
            return super().wrap_str_format(value)  # not a str's format; Markup keeps Jinja's escaping one
        owner: str = value.__self__
        format_map = value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> str:
            if format_map and (len(args) != 1 or kwargs):
                raise TypeError("format_map() takes exactly one argument")
            if format_map:
                return type(owner)(_BoundedFormatter(self).vformat(owner, (), args[0]))
            return type(owner)(_BoundedFormatter(self).vformat(owner, args, kwargs))

        return update_wrapper(bounded, value)

    @staticmethod
    def bounded_concat(parts: tuple[Any, ...]) -> str:
        texts = [str(part) for part in parts]
        _spend(sum(len(text) for text in texts))
        return "".join(texts)


def _fromjson(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


_ENVIRONMENT = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False)
for _name in REMOVED_GLOBALS:  # the names `vmcp validate` checks templates against (config/template_checks.py)
    _ENVIRONMENT.globals.pop(_name, None)
_ENVIRONMENT.filters.update({"fromjson": _fromjson})  # ADDED_FILTERS
_ENVIRONMENT.filters.update({name: _bounded_filter(name, f) for name, f in _ENVIRONMENT.filters.items()})


@lru_cache(maxsize=2048)
def _expression(source: str) -> Any:
    return _ENVIRONMENT.compile_expression(source, undefined_to_none=False)


@lru_cache(maxsize=2048)
def _template(source: str) -> jinja2.Template:
    return _ENVIRONMENT.from_string(source)


# --- the guard on template code ---------------------------------------------------------------------


def _trace(frame: FrameType, event: str, arg: Any) -> Any:
    """Traces template code only (compiled from strings: `<template>`), one budget line per line run."""
    if frame.f_code.co_filename != "<template>":
        return None
    return _trace_lines


def _trace_lines(frame: FrameType, event: str, arg: Any) -> Any:
    if event == "line":
        budget: _Budget | None = getattr(_current, "budget", None)
        if budget is not None:
            budget.line()
    return _trace_lines


@contextlib.contextmanager
def _budgeted(deadline: float | None, stop: threading.Event | None = None) -> Iterator[None]:
    """A budget and the line trace for the renders inside, in this thread (nested renders share them)."""
    if getattr(_current, "budget", None) is not None:
        yield
        return
    _current.budget = _Budget(deadline, stop)
    previous = sys.gettrace()
    sys.settrace(_trace)
    try:
        yield
    finally:
        sys.settrace(previous)
        _current.budget = None


def render_value(
    value: Any, context: dict[str, Any], place: str, deadline: float | None = None, stop: threading.Event | None = None
) -> Any:
    """`value` with every string in it rendered; dicts and lists are walked, other values kept. `deadline`
    (time.monotonic) bounds the whole walk, `stop` ends it early once set. Blocking: the executor calls it
    in a worker thread."""
    with _budgeted(deadline, stop):
        return _render_value(value, context, place)


def _render_value(value: Any, context: dict[str, Any], place: str) -> Any:
    if isinstance(value, str):
        return _render_string(value, context, place)
    if isinstance(value, dict):
        return {key: _render_value(item, context, f"{place}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_render_value(item, context, f"{place}[{index}]") for index, item in enumerate(value)]
    return value


def render_string(source: str, context: dict[str, Any], place: str, deadline: float | None = None) -> Any:
    if "{{" not in source and "{%" not in source:
        return source
    with _budgeted(deadline):
        return _render_string(source, context, place)


def _render_string(source: str, context: dict[str, Any], place: str) -> Any:
    if "{{" not in source and "{%" not in source:
        return source
    try:
        match = _ONE_EXPRESSION.match(source)
        if match is not None:
            return _json_data(_expression(match.group("expression"))(**context))
        return _collected(_template(source).generate(**context))
    except jinja2.TemplateError as exc:
        limit = isinstance(exc, SecurityError)
        raise TemplateError(place, f"{type(exc).__name__}: {exc}", limit) from None
    except KeptTextRead as exc:  # its message is the whole reason
        raise TemplateError(place, str(exc), limit=True) from None
    except RecursionError:  # a recursive macro; JSON nested too deep for `fromjson`
        raise TemplateError(place, "RecursionError: nested too deeply", limit=True) from None
    except MemoryError:
        raise TemplateError(place, "MemoryError: the template needs more memory than there is", limit=True) from None
    except Exception as exc:  # a filter's (`dictsort` of a list: AttributeError), any: the step's failure
        raise TemplateError(place, f"{type(exc).__name__}: {exc}") from None


_SCALARS = (str, int, float, bool, type(None))


def _json_data(value: Any) -> Any:
    """An expression's value as the JSON data it stands for, made here, in the render's thread and budget:
    a filter chain without `| list` gives a generator (`map`, `select`), `.items()` a view, `range` a range.
    Passed on as they are, a generator reached a client as the text `<generator object …>` (its structured
    content a list: the two disagreed), a view failed the SDK's encoder (`Internal server error`), and an
    empty generator was a true `condition`. Values that are no data (a function, bytes, a non-finite float: the
    text said `Infinity`, the structured content `null`) fail the render.
    Identity is kept where nothing changes: step outputs, already JSON, come back as they are."""
    try:
        return _converted(value)
    except RecursionError:  # JSON nested deeper than this walk goes came from a backend: data already
        return value


def _converted(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        str(value)  # raises the undefined error, with its name
    if isinstance(value, KeptText | Markup):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"the expression gives {value}, which JSON cannot hold")
    if isinstance(value, int) and too_wide(value):
        raise ValueError(f"the expression gives {TOO_WIDE}")
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, dict):
        items = {_json_key(key): _converted(item) for key, item in value.items()}
        same = len(items) == len(value) and all(items.get(k) is v for k, v in value.items())
        return value if same else items
    if isinstance(value, list):
        converted = [_converted(item) for item in value]
        return value if all(a is b for a, b in zip(converted, value, strict=True)) else converted
    if isinstance(value, tuple | set | frozenset | range | Iterator | KeysView | ValuesView | ItemsView):
        made = []
        for item in value:  # a generator's items are computed here: each counted as it comes
            _spend(_size(item))
            made.append(_converted(item))
        return made
    raise TypeError(f"the expression gives a {type(value).__name__}, which is not JSON data")


def _json_key(key: Any) -> str:
    """A dict key as JSON writes it (`{1: 'a'}` → `{"1": "a"}`), so the text and the structured content agree."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and too_wide(key):
        raise ValueError(f"the expression gives a key of {TOO_WIDE}")
    if isinstance(key, _SCALARS):
        return json.dumps(key)
    raise TypeError(f"a {type(key).__name__} cannot be a JSON object's key")


def _collected(chunks: Iterator[str]) -> str:
    """The template's output, counted as it is produced."""
    kept = []
    for chunk in chunks:
        _spend(len(chunk))
        kept.append(chunk)
    return "".join(kept)


def truthy(value: Any) -> bool:
    """A condition's value: a rendered string 'false', 'no', '0' or '' is false, like the value it prints."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "0", "none", "null")
    return bool(value)
