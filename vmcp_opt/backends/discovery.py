"""Discovered mode: backends from an MCP client's own config file, so an existing setup is one flag away.

Reads Claude Desktop's `claude_desktop_config.json` (`mcpServers`) and VS Code / Cursor `mcp.json`
(`servers`, or `mcpServers` in Cursor). Entries with `command` are stdio; entries with `url` are
streamable HTTP unless their `type` says `sse`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vmcp_opt.config import BackendConfig


def read_client_config(path: Path) -> list[BackendConfig]:
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be an object")
    servers = data.get("mcpServers", data.get("servers"))
    if not isinstance(servers, dict):
        raise ValueError(f"{path}: no `mcpServers` or `servers` object")
    return [_backend(name, entry, path) for name, entry in servers.items() if not _disabled(entry)]


def _disabled(entry: Any) -> bool:
    return isinstance(entry, dict) and bool(entry.get("disabled"))


def _backend(name: str, entry: Any, path: Path) -> BackendConfig:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: server {name!r} must be an object")
    safe_name = re.sub(r"[^A-Za-z0-9_-]", "-", name).strip("-_")[:48] or "server"
    kind = str(entry.get("type", "")).lower()
    fields: dict[str, Any] = {"name": safe_name}
    if "command" in entry:
        fields.update(
            transport="stdio",
            command=entry["command"],
            args=[str(arg) for arg in entry.get("args", [])],
            env={k: str(v) for k, v in (entry.get("env") or {}).items()},
            cwd=entry.get("cwd"),
        )
    elif "url" in entry:
        fields.update(
            transport="sse" if kind == "sse" else "streamable-http",
            url=entry["url"],
            headers={k: str(v) for k, v in (entry.get("headers") or {}).items()},
        )
    else:
        raise ValueError(f"{path}: server {name!r} has neither `command` nor `url`")
    return BackendConfig.model_validate(fields)
