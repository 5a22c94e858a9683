"""Per-backend include/exclude/workflow_only globs and overrides (rename, new description, annotations) on tools."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fnmatch import fnmatchcase

import mcp_types as types

from vmcp_opt.config import BackendToolsConfig
from vmcp_opt.config.sections import AnnotationsOverride
from vmcp_opt.display import shorten

logger = logging.getLogger(__name__)

# Rules already warned about as matching nothing, across catalogue builds: a set of config lines, so bounded
# by the config's size.
_warned_unmatched: set[str] = set()


@dataclass(frozen=True)
class Selected:
    original_name: str  # the backend's own
    tool: types.Tool  # with its override applied
    renamed: bool  # an override chose its name
    workflow_only: bool  # served to workflows' steps alone (`workflow_only`)


def select_tools(tools: list[types.Tool], rules: BackendToolsConfig | None) -> list[Selected]:
    """The tools that pass the filters, each with its override applied."""
    if rules is None:
        return [Selected(tool.name, tool, False, False) for tool in tools]
    selected = []
    for tool in tools:
        if _matches(tool.name, rules.exclude):
            continue
        hidden = _matches(tool.name, rules.workflow_only)
        if not hidden and not _matches(tool.name, rules.include):
            continue
        override = rules.overrides.get(tool.name)
        if override is None:
            selected.append(Selected(tool.name, tool, False, hidden))
            continue
        changes: dict[str, object] = {}
        if override.name:
            changes["name"] = override.name
        if override.description is not None:
            changes["description"] = override.description
        if override.annotations.model_fields_set:
            changes["annotations"] = _merged_annotations(tool.annotations, override.annotations)
        selected.append(Selected(tool.name, tool.model_copy(update=changes), bool(override.name), hidden))
    return selected


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _merged_annotations(backends: types.ToolAnnotations | None, override: AnnotationsOverride) -> types.ToolAnnotations:
    """The override's hints over the backend's, by MCP name: what clients list and Cedar judges the tool by
    (its `read_only`, `destructive`...), so a backend that declares nothing can be described by its operator."""
    kept = backends.model_dump(by_alias=True, exclude_none=True) if backends is not None else {}
    return types.ToolAnnotations.model_validate({**kept, **override.model_dump(exclude_none=True)})


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
        for kind, patterns in (
            ("include", rules.include),
            ("exclude", rules.exclude),
            ("workflow_only", rules.workflow_only),
        )
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
