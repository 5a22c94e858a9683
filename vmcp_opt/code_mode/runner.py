"""The child process a script runs in (`python -I -m vmcp_opt.code_mode.runner CPU_SECONDS MEMORY_MB`).

Why a process: starlark-pyo3 holds the GIL while it interprets (a loop in a worker thread stalled the event loop
for 5 ms at a time, measured) and has no heap bound, so a script in the gateway could take its CPU and memory.
Here the kernel bounds both (RLIMIT_CPU, RLIMIT_AS) and the gateway kills the process at its deadline.

The protocol is JSON lines. In: the first line `{"script": str, "data": {name: value}}`, then one answer per
request. Out: `{"calls": [[tool, arguments], ...]}` (a request; answered by `{"results": [{"value": v},
{"text": t} (parsed here when it is JSON) or {"error": str}, ...]}` in the same order), then the end: `{"result": json_text}` (the value encoded here, so the
gateway need not parse a result of a million tiny values on its event loop) or `{"error": str}`. Starlark's
standard library has no `print`, files, clock or imports, so the script has no other way out.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any

import starlark

FILENAME = "script.star"
# The functions a script calls tools with; `data` may not shadow them.
FUNCTIONS = ("call_tool", "call_tools")
# Starlark's own names (its spec's constants and built-in functions): a `data` key may not shadow them either.
BUILTINS = frozenset(
    "None True False abs any all bool dict dir enumerate fail float getattr hasattr hash int len list max min "  # noqa: SIM905
    "print range repr reversed sorted str tuple type zip".split()
)
# An error message's length at most (a tool's own error text included).
MESSAGE_MOST = 2000


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
    sys.stdout.write(json.dumps(message, ensure_ascii=True, allow_nan=False) + "\n")
    sys.stdout.flush()


def _ask(calls: list[list[Any]]) -> list[Any]:
    """The values of these tool calls, made by the gateway at once; the first failure raises."""
    _send({"calls": calls})
    line = sys.stdin.readline()
    if not line:
        os._exit(0)  # the gateway gave up on the run (SystemExit would become a Starlark error)
    results = json.loads(line)["results"]
    for (tool, _), result in zip(calls, results, strict=True):
        if "error" in result:
            _failure.append(f"tool '{tool}': {result['error']}")
            raise ToolFailed(_failure[-1])
    return [_value(result) for result in results]


def _value(result: dict[str, Any]) -> Any:
    """A call's value: as it came, or its text parsed when that is JSON (here, not on the gateway's event loop)."""
    if "text" not in result:
        return result["value"]
    try:
        return json.loads(result["text"])
    except (ValueError, RecursionError):
        return result["text"]


def _arguments(tool: object, arguments: object, keywords: dict[str, Any]) -> list[Any]:
    if not isinstance(tool, str):
        raise ToolFailed(f"a tool's name is a string, not {type(tool).__name__}")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ToolFailed(f"tool '{tool}': arguments are a dict, not {type(arguments).__name__}")
    return [tool, {**arguments, **keywords}]


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


def _source(script: str, names: list[str]) -> tuple[str, bool]:
    """The script, inside a function when it ends by `return` (taking the data's `names` as parameters, so they
    stay the script's globals to read and rebind): a script may `return` its result, or end with an expression.
    Wrapped only when it has no multi-line string, whose text indenting would change."""
    try:
        starlark.parse(FILENAME, script, starlark.Dialect.extended())
        return script, False
    except starlark.StarlarkError as error:
        if "`return` cannot be used outside" not in str(error):
            raise
        if '"""' in script or "'''" in script:
            raise ToolFailed(
                "the script has a triple-quoted string and a `return` outside a function: end it with the result's "
                "expression instead of `return`"
            ) from None
    body = "\n".join("    " + line for line in script.split("\n"))
    parameters = ", ".join(names)
    return f"def __script__({parameters}):\n{body}\n__script__({parameters})\n", True


def _run(script: str, data: dict[str, Any]) -> Any:
    """The script's value: its `return`'s, or its last expression's."""
    module = starlark.Module()
    for name, value in data.items():
        if not (name.isascii() and name.isidentifier()) or name in FUNCTIONS or name in BUILTINS:
            raise ToolFailed(f"data: '{name}' cannot be a variable's name (an ASCII name no built-in has)")
        module[name] = value
    module.add_callable("call_tool", call_tool)
    module.add_callable("call_tools", call_tools)
    source, wrapped = _source(script.replace("\r\n", "\n"), list(data))
    try:
        return starlark.eval(
            module, starlark.parse(FILENAME, source, starlark.Dialect.extended()), starlark.Globals.standard()
        )
    except starlark.StarlarkError as error:
        raise ToolFailed(_message(error, wrapped)) from None


def _message(error: BaseException, wrapped: bool) -> str:
    """`line N: what went wrong`, N the script's own line, from Starlark's report (a traceback, the message, then
    the place), the failed tool's message whole; the report itself, cut, when it names no line."""
    text = str(error)
    lines = text.split("\n")
    places = [i for i, line in enumerate(lines) if line.lstrip().startswith(f"--> {FILENAME}:")]
    if not places or places[-1] == 0:
        if "serde::serialize" in text:  # the value returned is not data (a function, a range...)
            kind = text.rsplit("type", 1)[-1].strip(" `")
            return f"the script's result has no JSON form (a {kind}): return dicts, lists, strings, numbers"
        return text[:MESSAGE_MOST]
    at = places[-1]  # the last: the place follows the message, which a tool's own text may imitate
    line_number = int(lines[at].split(":")[1]) - (1 if wrapped else 0)
    what = _failure[-1] if _failure else lines[at - 1].strip()
    for prefix in ("error: ", "ToolFailed: "):
        what = what.removeprefix(prefix)
    return f"line {line_number}: {what}"[:MESSAGE_MOST]


def main() -> None:
    _limit(int(sys.argv[1]), int(sys.argv[2]))
    line = sys.stdin.readline()
    if not line:
        return  # a spare the gateway no longer needs
    request = json.loads(line)
    try:
        value = _run(request["script"], request.get("data") or {})
    except starlark.StarlarkError as error:  # the script does not parse
        _send({"error": _message(error, wrapped=False)})
        return
    except ToolFailed as error:
        _send({"error": str(error)})
        return
    except Exception as error:  # anything else of the interpreter's: the gateway's log need not hear of it
        _send({"error": f"{type(error).__name__}: {str(error)[:MESSAGE_MOST]}"})
        return
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as error:  # NaN, an int past 4,300 digits, no data at all
        _send({"error": f"the script's result has no JSON form: {str(error)[:MESSAGE_MOST]}"})
        return
    _send({"result": encoded})


if __name__ == "__main__":
    main()
