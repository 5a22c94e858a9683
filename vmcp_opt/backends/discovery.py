"""Discovered mode: backends from an MCP client's own config file, so an existing setup is one flag away.

Reads Claude Desktop's `claude_desktop_config.json` (`mcpServers`) and VS Code / Cursor `mcp.json`
(`servers`, or `mcpServers` in Cursor). Entries with `command` are stdio; entries with `url` are
streamable HTTP unless their `type` says `sse`.

An entry that launches this gateway (the `vmcp` command, `python -m vmcp_opt`, or an entry named `vmcp`,
as the `vmcp serve` banner suggests adding) is skipped with a warning: the gateway would start itself, list
its own meta-tools as a backend's, and could recurse.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from pathlib import Path, PurePath
from typing import Any

from vmcp_opt.config import BackendConfig

logger = logging.getLogger(__name__)

# Names under which a client config lists this gateway (the banner's snippet says "vmcp").
GATEWAY_NAMES = frozenset({"vmcp", "vmcp-opt", "vmcp_opt"})


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
    backends = []
    for name, entry in servers.items():
        if _disabled(entry):
            continue
        if launches_this_gateway(name, entry):
            logger.warning(
                "discovery: skipping %r in %s: it launches this gateway, which would then start itself", name, path
            )
            continue
        backends.append(_backend(name, entry, path))
    return backends


def launches_this_gateway(name: str, entry: Any) -> bool:
    """Whether a client config entry runs vmcp-opt itself: by its name, its command, or `python -m vmcp_opt`."""
    if name.strip().lower() in GATEWAY_NAMES:
        return True
    if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
        return False
    program = PurePath(entry["command"].replace("\\", "/")).name.lower().removesuffix(".exe")
    if program in GATEWAY_NAMES:
        return True
    args = [str(arg) for arg in entry.get("args") or []]
    return program.startswith("python") and any(
        flag == "-m" and module.split(".")[0] == "vmcp_opt" for flag, module in itertools.pairwise(args)
    )


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
