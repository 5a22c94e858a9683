"""What a workflow step's call gave (vmcp_opt/workflows/executor.py runs the steps): its output read from the
backend's result, the result's non-text content kept beside it, an elicitation answer checked against its form,
the error that fails a step, and what of a run's output no JSON message can carry."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import jsonschema
import mcp_types as types

from vmcp_opt.backends.results import json_size
from vmcp_opt.display import shorten
from vmcp_opt.workflows.renders import RunRenders

# Most digits of an integer JSON carries from one process to another: Python's `json` (its str conversion) and
# pydantic-core (the SDK's reader, in backends and clients) refuse more. A request holding one was read by no
# backend, so nothing answered it and its run waited for its timeout.
MAX_JSON_INT_DIGITS = 4300
TOO_WIDE = f"an integer of more than {MAX_JSON_INT_DIGITS:,} digits, which JSON cannot carry"
_PAST_JSON_INT: int = 10**MAX_JSON_INT_DIGITS
_WITHIN_JSON_BITS = _PAST_JSON_INT.bit_length() - 1  # every integer of at most these bits has fewer digits
# A run's output up to about this size is checked on the event loop (walking it costs less than a thread's hop).
_CHECKED_INLINE = 64 * 1024
_DEEPEST = 1000  # levels walked: deeper, `output_text` fails the run as "nested too deeply" (provider.py)
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_PROBLEM = "holds a lone surrogate (such as \\ud800), which UTF-8 cannot carry"


class StepError(Exception):
    def __init__(self, reason: str, *, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class Called:
    """What a step's attempt gave: its output, and its result's content when that held more than text (a
    for_each's: one entry per item)."""

    output: Any
    content: list[Any] | None = None

    def held(self) -> Any:
        """What it comes to against limits.max_result_bytes: the output, and the content when there is one."""
        return [self.output, self.content] if self.content else self.output


def answer_problem(content: Any, schema: dict[str, Any]) -> None:
    """Refuses an accepted answer that does not fit the form: the client's word is not checked by the SDK,
    and a missing or mistyped field would otherwise fail a later step with a reason naming that step."""
    try:
        problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(content or {}))
    except jsonschema.SchemaError as exc:  # checked at load (config/workflows.py); kept from crashing the run
        raise StepError(f"requested_schema is not a valid JSON Schema: {exc.message}", retryable=False) from None
    if problem is not None:
        where = "".join(f".{part}" for part in problem.absolute_path)
        raise StepError(
            f"the user's answer does not fit requested_schema: content{where}: {problem.message}", retryable=False
        )


def output_text(output: Any) -> str:
    """An output as the result's text: a string as it is, anything else as JSON. Non-ASCII as written, as
    find_tool's answer: an escape per character costs an agent's model tokens. ValueError, RecursionError
    when it cannot be written."""
    return output if isinstance(output, str) else json.dumps(output, default=str, ensure_ascii=False)


def result_text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def result_content(result: types.CallToolResult) -> list[dict[str, Any]] | None:
    """The result's content blocks as MCP JSON when any is not text, else None: the output holds only the
    texts, and an image or a resource link the backend returned must not vanish on the way to the client."""
    if all(isinstance(block, types.TextContent) for block in result.content):
        return None
    return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]


def result_output(result: types.CallToolResult) -> Any:
    """A step's output: the structured content, else the text (parsed when it is JSON), else None."""
    if result.structured_content is not None:
        return result.structured_content
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    if len(texts) != 1:
        return texts or None
    try:
        return json.loads(texts[0])
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes: kept as text
        return texts[0]


def too_wide(value: int) -> bool:
    """Whether `value` has more digits than JSON carries: compared, never written out (that is quadratic)."""
    return value.bit_length() > _WITHIN_JSON_BITS and abs(value) >= _PAST_JSON_INT


async def output_problem(output: Any, renders: RunRenders) -> str | None:
    """Why a run's output cannot be sent to its client (`output.field: why`), or None. A large output is walked in
    a worker thread, on a slot of the run's renders."""
    if json_size(output, _CHECKED_INLINE) is not None:
        return unsendable(output, "output")
    return await renders.render(lambda stop: unsendable(output, "output"))


def unsendable(value: Any, place: str) -> str | None:
    """`place.path: why` for the first part of `value`, in document order, that no JSON message can carry: an
    integer past `MAX_JSON_INT_DIGITS` digits, a non-finite float, a string or key with a lone surrogate (UTF-8 has
    none: the client's parser refused the answer), anything that is not JSON data. None when all of it can go.
    Iterative; a container met twice (shared, or a cycle) is walked once, and none deeper than `_DEEPEST`. A part's
    path is written only for the part named."""
    seen: set[int] = set()
    stack: list[tuple[Any, _Path, int]] = [(value, (place,), 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict | list):
            if id(node) in seen or depth >= _DEEPEST:
                continue
            seen.add(id(node))
            if isinstance(node, list):
                stack.extend((node[i], (path, i), depth + 1) for i in range(len(node) - 1, -1, -1))
                continue
            for key in node:
                if not isinstance(key, str):
                    return f"{_written(path)}: a key that is not a string"
                if _has_surrogate(key):
                    return f"{_written(path)}: a key that {_SURROGATE_PROBLEM}"
            stack.extend((item, (path, key), depth + 1) for key, item in reversed(node.items()))
            continue
        problem = _scalar_problem(node)
        if problem is not None:
            return f"{_written(path)}: {problem}"
    return None


# A part's path, kept unwritten while the walk goes: its container's, and its key or index (the whole: its place).
_Path = tuple[Any, ...]


def _written(path: _Path) -> str:
    parts: list[str] = []
    while len(path) == 2:
        path, step = path
        parts.append(f"[{step}]" if isinstance(step, int) else f".{shorten(step, 80)}")
    return str(path[0]) + "".join(reversed(parts))


def _scalar_problem(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return TOO_WIDE if too_wide(value) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value}, which JSON cannot hold"
    if isinstance(value, str):
        return _SURROGATE_PROBLEM if _has_surrogate(value) else None
    return f"a {type(value).__name__}, which is not JSON data"


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None
