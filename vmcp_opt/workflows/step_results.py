"""What a workflow step's call gave (vmcp_opt/workflows/executor.py runs the steps): its output read from the
backend's result, the result's non-text content kept beside it, an elicitation answer checked against its form,
and the error that fails a step."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema
import mcp_types as types


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
