"""Per-backend include/exclude globs and overrides (rename, new description) on tools."""

from __future__ import annotations

import logging
from fnmatch import fnmatchcase

import mcp_types as types

from vmcp_opt.config import BackendToolsConfig
from vmcp_opt.display import shorten

logger = logging.getLogger(__name__)

# Rules already warned about as matching nothing, across catalogue builds: a set of config lines, so bounded
# by the config's size.
_warned_unmatched: set[str] = set()


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


def unmatched_rules(backend: str, tools: list[types.Tool], rules: BackendToolsConfig | None) -> list[str]:
    """The rules of `aggregation.tools.<backend>` that match none of the tools the backend lists: a misspelt
    name, or an override keyed by the served (prefixed) name instead of the backend's own. Nothing for a
    backend that lists no tools (it may be starting, or empty for now)."""
    if rules is None or not tools:
        return []
    names = [tool.name for tool in tools]
    where = f"aggregation.tools.{backend}"
    lists = f"no tool backend {backend} lists"
    problems = [
        f"{where}.{kind}: {shorten(pattern)!r} matches {lists}"
        for kind, patterns in (("include", rules.include), ("exclude", rules.exclude))
        for pattern in patterns
        if not any(fnmatchcase(name, pattern) for name in names)
    ]
    listed = set(names)
    problems += [
        f"{where}.overrides: backend {backend} lists no tool {shorten(name)!r} (overrides are keyed by the "
        "backend's own tool name, not the one served)"
        for name in rules.overrides
        if name not in listed
    ]
    return problems


def warn_unmatched(backend: str, tools: list[types.Tool], rules: BackendToolsConfig | None) -> None:
    """Warn, once per rule, of the filters and overrides that match nothing: they were silent, so a typo in an
    `exclude` served the very tool it was meant to hide."""
    for problem in unmatched_rules(backend, tools, rules):
        if problem not in _warned_unmatched:
            _warned_unmatched.add(problem)
            logger.warning("%s", problem)
