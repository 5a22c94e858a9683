"""Per-backend include/exclude globs and overrides (rename, new description) on tools."""

from __future__ import annotations

from fnmatch import fnmatchcase

import mcp_types as types

from vmcp_opt.config import BackendToolsConfig


def select_tools(tools: list[types.Tool], rules: BackendToolsConfig | None) -> list[tuple[str, types.Tool, bool]]:
    """The tools that pass the filters: (the backend's name, the tool with its override applied, renamed?)."""
    if rules is None:
        return [(tool.name, tool, False) for tool in tools]
    selected = []
    for tool in tools:
        if not any(fnmatchcase(tool.name, pattern) for pattern in rules.include):
            continue
        if any(fnmatchcase(tool.name, pattern) for pattern in rules.exclude):
            continue
        override = rules.overrides.get(tool.name)
        if override is None:
            selected.append((tool.name, tool, False))
            continue
        changes: dict[str, str] = {}
        if override.name:
            changes["name"] = override.name
        if override.description is not None:
            changes["description"] = override.description
        selected.append((tool.name, tool.model_copy(update=changes), bool(override.name)))
    return selected
