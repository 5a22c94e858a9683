"""The child process a script runs in (`python -I -m vmcp_opt.code_mode.runner CPU_SECONDS MEMORY_MB`).

Why a process: starlark-pyo3 holds the GIL while it interprets (a loop in a worker thread stalled the event loop
for 5 ms at a time, measured) and has no heap bound, so a script in the gateway could take its CPU and memory.
Here the kernel bounds both (RLIMIT_CPU, RLIMIT_AS) and the gateway kills the process at its deadline.

The protocol is JSON lines in UTF-8, not escaped (`ensure_ascii=False`: an escape takes 6 or 12 bytes a character,
and the gateway counts sizes as for a client's call; JSON escapes a string's newlines, so none splits a line). In: the
first line `{"script": str, "data": {name: value}}`, then one answer per request. Out: `{"calls": [[tool,
arguments], ...]}` (a request; answered by `{"results": [{"value": v}, {"text": t} (parsed here when it is JSON)
or {"error": str}, ...]}` in the same order), then the end: `{"result": json_text}` (the value encoded here, so the
gateway need not parse a result of a million tiny values on its event loop) or `{"error": str}`. Starlark's
standard library has no `print`, files, clock or imports, so the script has no other way out.
"""

from __future__ import annotations

import io
import json
import keyword
import math
import os
import resource
import sys
import tokenize
from collections.abc import Callable
from typing import Any

import starlark

FILENAME = "script.star"
DIALECT = starlark.Dialect.extended()
# The functions a script calls tools with; `data` may not shadow them.
FUNCTIONS = ("call_tool", "call_tools")
# Starlark's own names (its spec's constants and built-in functions): a `data` key may not shadow them either.
BUILTINS = frozenset(
    "None True False abs any all bool dict dir enumerate fail float getattr hasattr hash int len list max min "  # noqa: SIM905
    "print range repr reversed sorted str tuple type zip".split()
)
# Names no variable may have: Starlark's keywords and the words its spec reserves (Python's keywords, which a
# later Starlark may take), and `load`, which is Starlark's alone.
KEYWORDS = frozenset(keyword.kwlist) | {"load"}
# An error message's length at most (a tool's own error text included).
MESSAGE_MOST = 2000
# The global the script's value is kept in (when its last statement is an expression, or it ends by `return`), so
# that Starlark can still look at it after starlark-pyo3 converted it. Not `_`-prefixed: those are the module's
# own, which starlark-pyo3 reads as None.
RESULT = "vmcp_script_result"
# How many lines up from its end a script's last statement is looked for (each a parse of what comes before it).
STATEMENT_TRIES = 100
# What a script's values pass through before they leave Starlark: starlark-pyo3 turns a float JSON cannot hold
# (inf, nan) into None as it converts a value, so only Starlark can tell one from a real None. `call_tool` and
# `call_tools` check their arguments here, then call the Python functions below. Those (the `HOOKS`) and the checks
# are the factory's locals, each function closing over them: a script that calls a hook by its global name, or
# rebinds a global, cannot skip a check (the hooks' globals are then replaced: `_hidden`).
PRELUDE_FILE = "gateway.star"
HOOKS = ("__call_tool__", "__call_tools__", "__refuse__")
GATEWAY = """
def __gateway__(call_one, call_many, refuse):
    def path(parents, parent, key, root):
        keys = []
        for _ in range(len(parents) + 1):
            if parent == -1:
                break
            keys.append(key)
            parent, key = parents[parent]
        return root + "".join(["[%r]" % k for k in reversed(keys)])

    def non_finite(value, root):
        text = repr(value)
        if "inf" not in text and "nan" not in text:  # most values: no walk (repr is native code)
            return None
        parents = []  # each container's (parent's index, key): the path is made only for the float found
        stack = [(value, -1, None, 0)]
        for _ in range(2147483647):  # Starlark has no `while`
            if not stack:
                return None
            item, parent, key, depth = stack.pop()
            kind = type(item)
            if kind == "float" and not (abs(item) <= 1.7976931348623157e308):  # nan too: no `<=` holds for it
                return "%s is %s (JSON's numbers are finite)" % (path(parents, parent, key, root), str(item))
            if kind == "dict" or kind == "list" or kind == "tuple":
                if depth == 1000:  # deeper than starlark-pyo3 converts (a cycle?): its conversion fails, and says why
                    return None
                parents.append((parent, key))
                pairs = list(item.items()) if kind == "dict" else list(enumerate(item))
                for child_key, child in reversed(pairs):  # reversed: the first in order is found first
                    stack.append((child, len(parents) - 1, child_key, depth + 1))
        return None

    def call_tool(tool, arguments = None, **keywords):
        problem = non_finite(arguments, "arguments") or non_finite(keywords, "arguments")
        if problem:
            refuse("tool '%s': %s" % (tool, problem))
        return call_one(tool, arguments, **keywords)

    def call_tools(calls):
        problem = non_finite(calls, "calls")
        if problem:
            refuse("call_tools: " + problem)
        return call_many(calls)

    return call_tool, call_tools, non_finite
"""
PRELUDE = f"{GATEWAY}\ncall_tool, call_tools = __gateway__({', '.join(HOOKS)})[:2]\n"
# The script's result checked in a module of its own, the script's frozen and loaded: a script that rebinds a
# built-in (`repr`, `abs`) or the prelude's names cannot hide a float JSON cannot hold from this check.
RESULT_CHECK = f'load("{FILENAME}", "{RESULT}")\n{GATEWAY}\n__gateway__(None, None, None)[2]({RESULT}, "result")\n'


class ToolFailed(Exception):
    """A tool call the script made failed; Starlark reports it at the script's line."""


# The message of the tool failure that ended the script, whole: Starlark's report keeps only its last line.
_failure: list[str] = []


def _limit(cpu_seconds: int, memory_mb: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no image of callers' data on disk


def _send(message: dict[str, Any]) -> None:
    # surrogatepass: a lone surrogate in a tool's error text goes as the gateway sent it, never breaking the line.
    line = json.dumps(message, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")
    sys.stdout.buffer.write(line + b"\n")
    sys.stdout.buffer.flush()


def _receive(constants: list[str] | None = None) -> Any:
    """The gateway's next message, or None when it closed the pipe (json.loads decodes bytes with surrogatepass);
    the `NaN`, `Infinity` and `-Infinity` read in it added to `constants`."""
    line = sys.stdin.buffer.readline()
    return json.loads(line, parse_constant=_noting(constants)) if line else None


def _noting(constants: list[str] | None) -> Callable[[str], float]:
    """json's `parse_constant`: the float, as json reads it, noted (only these hold a float JSON has no form for)."""

    def noted(name: str) -> float:
        if constants is not None:
            constants.append(name)
        return float(name)

    return noted


def _ask(calls: list[list[Any]]) -> list[Any]:
    """The values of these tool calls, made by the gateway at once; the first failure raises."""
    _send({"calls": calls})
    constants: list[str] = []  # a backend's inf or nan in a structured result: the gateway writes what it read
    answer = _receive(constants)
    if answer is None:
        os._exit(0)  # the gateway gave up on the run (SystemExit would become a Starlark error)
    results = answer["results"]
    for (tool, _), result in zip(calls, results, strict=True):
        if "error" in result:
            _refuse(f"tool '{tool}': {result['error']}")
    values = []
    for (tool, _), result in zip(calls, results, strict=True):
        value, maybe_non_finite = _value(result, bool(constants))
        problem = _non_finite(value) if maybe_non_finite else None
        if problem:  # Starlark's values come from JSON, which has no form for it (and None would hide it)
            _refuse(f"tool '{tool}': its result has no JSON form: {problem} (JSON's numbers are finite)")
        values.append(value)
    return values


def _refuse(message: str) -> None:
    _failure.append(message)
    raise ToolFailed(message)


def _value(result: dict[str, Any], line_non_finite: bool) -> tuple[Any, bool]:
    """A call's value: as it came, or its text parsed when that is JSON (here, not on the gateway's event loop), as
    Python's json reads it (`NaN`, `Infinity`: what its `dumps` writes); and whether it may hold a float JSON has
    no form for (its text, or the answer's line, had one of those)."""
    if "text" not in result:
        return result["value"], line_non_finite
    constants: list[str] = []
    try:
        return json.loads(result["text"], parse_constant=_noting(constants)), bool(constants)
    except (ValueError, RecursionError):
        return result["text"], False


def _non_finite(value: Any) -> str | None:
    """`result["v"][1] is inf`: the first float JSON has no form for in `value`, in order, and its place; None if
    there is none."""
    return _first_problem(value, "result", _non_finite_float)


def _non_finite_float(item: Any) -> str | None:
    return f"is {item!r}" if isinstance(item, float) and not math.isfinite(item) else None


def _non_string_key(item: Any) -> str | None:
    """JSON's object keys are strings: `json.dumps` would write `1` as `"1"`, so `{1: 2, "1": 3}` would lose a value."""
    for key in item if isinstance(item, dict) else ():
        if not isinstance(key, str):
            return f"has the key {key!r}, not a string (JSON's object keys are strings)"
    return None


def _first_problem(value: Any, root: str, problem: Callable[[Any], str | None]) -> str | None:
    """`root["v"][1] <problem>`: the first item of `value`, in order, that `problem` finds fault with, and its place.
    A walk of its own, as the prelude's: no recursion (json.loads nests as deep as its recursion allows), and a
    container's place kept as its parent's index and key, the path made only for the item found."""
    parents: list[tuple[int, Any]] = []
    stack: list[tuple[Any, int, Any]] = [(value, -1, None)]
    while stack:
        item, parent, key = stack.pop()
        if (found := problem(item)) is not None:
            return f"{_path(root, parents, parent, key)} {found}"
        if isinstance(item, dict | list):
            parents.append((parent, key))
            pairs = list(item.items() if isinstance(item, dict) else enumerate(item))
            stack.extend((child, len(parents) - 1, child_key) for child_key, child in reversed(pairs))
    return None


def _path(root: str, parents: list[tuple[int, Any]], parent: int, key: Any) -> str:
    keys = []
    while parent != -1:
        keys.append(key)
        parent, key = parents[parent]
    return root + "".join(f"[{json.dumps(k, ensure_ascii=False)}]" for k in reversed(keys))


def _arguments(tool: object, arguments: object, keywords: dict[str, Any]) -> list[Any]:
    if not isinstance(tool, str):
        raise ToolFailed(f"a tool's name is a string, not {type(tool).__name__}")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ToolFailed(f"tool '{tool}': arguments are a dict, not {type(arguments).__name__}")
    arguments = {**arguments, **keywords}
    if problem := _first_problem(arguments, "arguments", _non_string_key):
        raise ToolFailed(f"tool '{tool}': {problem}")
    return [tool, arguments]


def call_tool(tool: object, arguments: object = None, **keywords: Any) -> Any:
    return _ask([_arguments(tool, arguments, keywords)])[0]


def call_tools(calls: object) -> list[Any]:
    if not isinstance(calls, list):
        raise ToolFailed("call_tools takes a list of [tool, arguments] pairs")
    pairs = []
    for call in calls:
        if not isinstance(call, list) or len(call) not in (1, 2):
            raise ToolFailed("call_tools takes a list of [tool, arguments] pairs")
        pairs.append(_arguments(call[0], call[1] if len(call) == 2 else None, {}))
    return _ask(pairs) if pairs else []


def _parses(source: str) -> bool:
    try:
        starlark.parse(FILENAME, source, DIALECT)
    except starlark.StarlarkError:
        return False
    return True


def _source(script: str, names: list[str]) -> tuple[str, bool, bool]:
    """The script to evaluate, whether it is wrapped (its lines then one further down) and whether it keeps its value
    in `RESULT`. Wrapped, inside a function, when it ends by `return` (taking the data's `names` as parameters, so
    they stay the script's globals to read and rebind): a script may `return` its result, or end with an
    expression."""
    try:
        starlark.parse(FILENAME, script, DIALECT)
    except starlark.StarlarkError as error:
        if "`return` cannot be used outside" not in str(error):
            raise
        parameters = ", ".join(names)
        return f"def __script__({parameters}):\n{_indented(script)}\n{RESULT} = __script__({parameters})\n", True, True
    kept = _keeping_value(script)
    return (script, False, False) if kept is None else (kept, False, True)


def _indented(script: str) -> str:
    """The script's lines indented as a function's body, but for those that go on with a string begun on a line
    before (triple-quoted, or continued by a backslash): indenting one would put spaces into the string."""
    inside = _string_continuations(script)
    return "\n".join(line if row in inside else "    " + line for row, line in enumerate(script.split("\n")))


def _string_continuations(script: str) -> set[int]:
    """The lines (0-based) that go on with a string begun on a line before. Starlark's strings are Python's,
    lexically, so Python's tokenizer finds them; a token over several lines is a string (or a part of an f-string)."""
    inside: set[int] = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(script).readline):
            if token.type == tokenize.ERRORTOKEN:
                raise SyntaxError(token.string)
            first, last = token.start[0], token.end[0]  # 1-based: the lines after the first are `first..last-1`
            if last > first and token.type not in (tokenize.NEWLINE, tokenize.NL):
                inside.update(range(first, last))
    except (SyntaxError, tokenize.TokenError):  # a script Starlark reads but Python's tokenizer does not
        raise ToolFailed(
            "the script's strings could not be told apart from its code to wrap it in a function (it ends by "
            "`return`): end it with the result's expression instead of `return`"
        ) from None
    return inside


def _keeping_value(script: str) -> str | None:
    """The script with its last statement, when that is an expression, assigned to `RESULT` on the same lines (its
    errors keep their line numbers); None when it ends otherwise (its value is then None), or that statement was
    not found. The statement starts at the last line at column 0 that everything before it parses without."""
    lines = script.split("\n")
    tries = 0
    for start in range(len(lines) - 1, -1, -1):
        if lines[start][:1] in ("", " ", "\t", "#"):
            continue
        tries += 1
        if tries > STATEMENT_TRIES:
            return None
        if not _parses("\n".join(lines[:start])):
            continue  # a line inside the last statement
        kept = "\n".join([*lines[:start], f"{RESULT} = (" + lines[start], *lines[start + 1 :], ")"])
        return kept if _parses(kept) else None
    return None


def _result(script: str, data: dict[str, Any]) -> str:
    """The script's value as JSON: its `return`'s, or its last expression's."""
    module = starlark.Module()
    for name, value in data.items():
        if not (name.isascii() and name.isidentifier()) or name.startswith("__") or name in _TAKEN:
            raise ToolFailed(f"data: '{name}' cannot be a variable's name (an ASCII name no keyword or built-in has)")
        module[name] = value
    hooks: tuple[Callable[..., object], ...] = (call_tool, call_tools, _refuse)
    for name, hook in zip(HOOKS, hooks, strict=True):
        module.add_callable(name, hook)
    starlark.eval(module, starlark.parse(PRELUDE_FILE, PRELUDE, DIALECT), starlark.Globals.standard())
    for name in HOOKS:  # the prelude's functions hold them; the script's calls go through those
        module.add_callable(name, _hidden(name))
    source, wrapped, kept = _source(script.replace("\r\n", "\n"), list(data))
    try:
        value = starlark.eval(module, starlark.parse(FILENAME, source, DIALECT), starlark.Globals.standard())
        if kept:
            value = module[RESULT]
    except starlark.StarlarkError as error:
        raise ToolFailed(_message(error, wrapped)) from None
    except ValueError as error:  # converted to Python: an int of more digits than Python writes
        raise ToolFailed(f"the script's result has no JSON form: {_readable(str(error))}") from None
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as error:  # nested too deep
        raise ToolFailed(f"the script's result has no JSON form: {str(error)[:MESSAGE_MOST]}") from None
    if kept and "null" in encoded:  # perhaps a float JSON cannot hold, which the conversion made None
        script_module = module.freeze()
        check = starlark.parse("check.star", RESULT_CHECK, DIALECT)
        loader = starlark.FileLoader(lambda _: script_module)
        problem = starlark.eval(starlark.Module(), check, starlark.Globals.standard(), loader)
        if problem:
            raise ToolFailed(f"the script's result has no JSON form: {problem}")
    return encoded


def _hidden(name: str) -> Callable[..., None]:
    """What a hook's global becomes once the prelude holds the hook: a script calling it is told what to call."""

    def refused(*_: Any, **__: Any) -> None:
        _refuse(f"`{name}` is the gateway's own; call `call_tool` or `call_tools`")

    return refused


_TAKEN = KEYWORDS | BUILTINS | frozenset(FUNCTIONS) | {RESULT}


def _readable(what: str) -> str:
    """Python's words for an integer it will not write, as the caller's."""
    if "integer string conversion" not in what:
        return what
    return f"an integer longer than the limit ({sys.get_int_max_str_digits()} digits)"


def _message(error: BaseException, wrapped: bool) -> str:
    """`line N: what went wrong`, N the script's own line, from Starlark's report (a traceback, the message, then
    the place), the failed tool's message whole; the report itself, cut, when it names no line."""
    text = str(error)
    lines = text.split("\n")
    places = [i for i, line in enumerate(lines) if line.lstrip().startswith("--> ")]
    if not places or places[-1] == 0:
        if "serde::serialize" in text:  # the value returned is not data (a function, a range...)
            kind = text.rsplit("type", 1)[-1].strip(" `")
            return f"the script's result has no JSON form (a {kind}): return dicts, lists, strings, numbers"
        return text[:MESSAGE_MOST]
    at = places[-1]  # the last: the place follows the message, which a tool's own text may imitate
    line_number = _script_line(lines, at)
    if line_number is None:
        return text[:MESSAGE_MOST]
    what = _failure[-1] if _failure else lines[at - 1].strip()
    for prefix in ("error: ", "ToolFailed: ", "ValueError: "):
        what = what.removeprefix(prefix)
    if "integer string conversion" in what:  # an argument: converted as `call_tool`'s was called
        what = f"{_readable(what)} has no JSON form"
    return f"line {line_number - (1 if wrapped else 0)}: {what}"[:MESSAGE_MOST]


def _script_line(lines: list[str], at: int) -> int | None:
    """The script's line of the error placed at `lines[at]`: that place's when it is in the script, else (in the
    prelude's `call_tool`) the script's last frame of the traceback that opens the report."""
    place = lines[at].lstrip().removeprefix("--> ")
    if place.startswith(f"{FILENAME}:"):
        return int(place.split(":")[1])
    frames = []
    for line in lines[1:at] if lines[0].startswith("Traceback") else []:
        if line.startswith("  * "):
            frames.append(line[4:])
        elif not line.startswith("      "):  # past the traceback: the message
            break
    ours = [frame for frame in frames if frame.startswith(f"{FILENAME}:")]
    return int(ours[-1].split(":")[1].split(",")[0]) if ours else None


def main() -> None:
    memory_mb = int(sys.argv[2])
    _limit(int(sys.argv[1]), memory_mb)
    request = _receive()
    if request is None:
        return  # a spare the gateway no longer needs
    try:
        encoded = _result(request["script"], request.get("data") or {})
    except starlark.StarlarkError as error:  # the script does not parse
        _send({"error": _message(error, wrapped=False)})
    except ToolFailed as error:
        _send({"error": str(error)})
    except MemoryError:  # RLIMIT_AS, met while converting the script's values: named as the gateway names it
        _send({"error": f"it ran out of memory ({memory_mb} MiB, code_mode.memory_mb)"})
    except Exception as error:  # anything else of the interpreter's: the gateway's log need not hear of it
        _send({"error": f"{type(error).__name__}: {str(error)[:MESSAGE_MOST]}"})
    else:
        _send({"result": encoded})


if __name__ == "__main__":
    main()
