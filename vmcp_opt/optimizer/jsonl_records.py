"""Tool records from JSON lines (`vmcp index ... --from-jsonl`): one record per line, `name`, `backend`,
`description`, `input_schema` (or `inputSchema`), optional `title`, `backend_description`, `original_name`; a
line that is no such record is an error naming the file, the line and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mcp_types as types

from vmcp_opt.optimizer.documents import ToolRecord


def record_tool(record: ToolRecord) -> types.Tool:
    """The MCP tool a record stands for, as far as the record knows it (for `--from-jsonl`)."""
    return types.Tool(
        name=record.name,
        title=record.title,
        description=record.description,
        input_schema=dict(record.input_schema) or {"type": "object"},
    )


def read_jsonl(path: Path) -> list[ToolRecord]:
    """Tool records from JSON lines; `inputSchema` is accepted for `input_schema`. A file that cannot be read,
    or a line that is no tool record, is a `ValueError` naming the file (and the line)."""
    try:
        with path.open(encoding="utf-8") as file:
            return [_tool_record(line, f"{path}:{n}") for n, line in enumerate(file, start=1) if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a JSON-lines file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _tool_record(line: str, where: str) -> ToolRecord:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: not a tool record: expected a JSON object, got {type(data).__name__}")
    missing = [key for key in ("name", "backend") if key not in data]
    if missing:
        needed = "every record needs 'name' and 'backend'"
        raise ValueError(f"{where}: not a tool record: missing {' and '.join(map(repr, missing))} ({needed})")
    present = [key for key in _FIELD_TYPES if data.get(key) is not None or key in ("name", "backend")]
    wrong = [_wrong_type(key, data[key], _FIELD_TYPES[key]) for key in present]
    if any(wrong):
        raise ValueError(f"{where}: not a tool record: {'; '.join(problem for problem in wrong if problem)}")
    return ToolRecord(
        name=data["name"],
        backend=data["backend"],
        description=data.get("description") or "",
        input_schema=data.get("input_schema") or data.get("inputSchema") or {},
        title=data.get("title"),
        backend_description=data.get("backend_description") or "",
        original_name=data.get("original_name"),
    )


# A record's fields and the JSON type each must have (null is as if absent, but for `name` and `backend`).
_FIELD_TYPES: dict[str, type] = {
    "name": str,
    "backend": str,
    "description": str,
    "input_schema": dict,
    "inputSchema": dict,
    "title": str,
    "backend_description": str,
    "original_name": str,
}
_JSON_NAMES = {
    str: "a string",
    dict: "an object",
    list: "an array",
    bool: "a boolean",
    int: "a number",
    type(None): "null",
}


def _wrong_type(key: str, value: Any, kind: type) -> str | None:
    if isinstance(value, kind):
        return None
    got = "a number" if isinstance(value, float) else _JSON_NAMES.get(type(value), type(value).__name__)
    return f"{key!r} must be {_JSON_NAMES[kind]}, got {got}"
