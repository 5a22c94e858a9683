"""The dev split's tools as real servers often describe them: docstrings (`python -m eval.tune --noisy`).

ToolLens' descriptions are one clean sentence; the functions behind real MCP servers publish their whole
docstring: an `Args:` block (Google, Sphinx or numpy style, in turn), `Returns:`, `Raises:`, a doctest
example, a line of boilerplate, and on one tool in three a note in another language. Every second tool has
its parameter descriptions only in the docstring, as FastMCP-style servers publish them. Deterministic:
the same tool always gets the same noise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from eval.datasets import Dataset, EvalTool, ToolFields

BOILERPLATE = (
    "This endpoint is part of the public API. Rate limits apply (100 requests per minute); see the "
    "documentation for authentication, pagination and error codes."
)
# Fullwidth punctuation is part of the Chinese text.
OTHER_LANGUAGE = (
    "注意：调用此工具需要有效的 API 密钥，结果以 JSON 格式返回。",  # noqa: RUF001
    "Примечание: для вызова нужен действующий ключ API.",
)


def noisy_dataset(dataset: Dataset) -> Dataset:
    return replace(dataset, tools=[_noisy_tool(tool, position) for position, tool in enumerate(dataset.tools)])


def _noisy_tool(tool: EvalTool, position: int) -> EvalTool:
    fields = tool.fields
    properties: dict[str, Any] = dict(fields.input_schema.get("properties") or {})
    described = {
        name: str(spec.get("description") or "") for name, spec in properties.items() if isinstance(spec, dict)
    }
    style = (_google, _sphinx, _numpy)[position % 3]
    parts = [fields.description or fields.name, BOILERPLATE]
    if position % 3 == 1:
        parts.append(OTHER_LANGUAGE[position % 2])
    parts.append(style(described))
    parts.append(
        f"Example:\n    >>> result = {fields.name}({_call_arguments(described)})\n    >>> result['status']\n    200"
    )
    schema = fields.input_schema
    if position % 2 == 0 and properties:
        # The schema as FastMCP derives it from a signature: types and names, the words only in the docstring.
        bare = {name: {k: v for k, v in spec.items() if k != "description"} for name, spec in properties.items()}
        schema = {**schema, "properties": bare}
    noisy = ToolFields(
        name=fields.name,
        backend=fields.backend,
        description="\n\n".join(parts),
        input_schema=dict(schema),
        title=fields.title,
        backend_description=fields.backend_description,
        original_name=fields.original_name,
    )
    return replace(tool, fields=noisy)


def _google(described: dict[str, str]) -> str:
    args = "\n".join(f"    {name} (str): {text or 'The ' + name + '.'}" for name, text in described.items())
    returns = "Returns:\n    dict: The response body as JSON.\n\nRaises:\n    ValueError: If an argument is invalid."
    return f"Args:\n{args}\n\n{returns}" if args else returns


def _sphinx(described: dict[str, str]) -> str:
    lines = [f":param {name}: {text or 'The ' + name + '.'}\n:type {name}: str" for name, text in described.items()]
    return "\n".join([*lines, ":returns: The response body as JSON.", ":raises ValueError: If an argument is invalid."])


def _numpy(described: dict[str, str]) -> str:
    args = "\n".join(f"{name} : str\n    {text or 'The ' + name + '.'}" for name, text in described.items())
    returns = "Returns\n-------\ndict\n    The response body as JSON."
    return f"Parameters\n----------\n{args}\n\n{returns}" if args else returns


def _call_arguments(described: dict[str, str]) -> str:
    return ", ".join(f"{name}='...'" for name in list(described)[:2])
