"""Which of a backend's tools can be served; a tool that cannot is dropped, never its backend or the gateway.

A backend decides its own tool names and schemas, so nothing it lists may stop the catalogue from being
built. A tool is dropped, with one warning naming the backend and the tool, when
- its name breaks the MCP name rules (1 to 128 of `A-Z a-z 0-9 _ - .`), or its exposed name would after
  the prefix or an override;
- the backend already listed a tool of that name (the first one is kept);
- its `inputSchema` is not an object schema (`type`, when given, must be "object"; `properties` a mapping
  of schemas; `required` a list of names), which clients refuse;
- its `execution.taskSupport` is "required": it runs only as a task, and the gateway relays no tasks (it
  declares no `tasks` capability and drops a call's `task`), so every call of it would fail. A tool whose task
  support is "optional" is kept as listed: a call without `task` runs it normally;
- its exposed name is already taken by another backend's tool (conflicts.py decides which one stays).

Prompts and resource templates are screened by name too (`screen_prompts`, `screen_templates`): MCP sets no
character rule for their names (a prompt may be called "Code review"), but each name goes into every client's
list and into the gateway's logs, so one that is empty, longer than 128 characters or holds a control, format
or other unprintable character (a newline, an ANSI escape, a right-to-left override) is dropped the same way.

Warnings are given once per problem (the catalogue is rebuilt on every backend change), at most
`MAX_WARNINGS_PER_BACKEND` a backend at a time, the rest counted in one line.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, TypeVar

import mcp_types as types

from vmcp_opt.config.base import TOOL_NAME_RULE
from vmcp_opt.display import shorten

logger = logging.getLogger(__name__)

NAME_RULE = TOOL_NAME_RULE
MAX_NAME = 128  # characters of a prompt's or resource template's name, as of a tool's
NamedT = TypeVar("NamedT", types.Prompt, types.ResourceTemplate)
MAX_WARNINGS_PER_BACKEND = 20
_REMEMBERED_WARNINGS = 4096


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a tool name, or None."""
    if NAME_RULE.fullmatch(name):
        return None
    if len(name) > 128:
        return f"its name is {len(name):,} characters long (at most 128)"
    if not name:
        return "its name is empty"
    return "its name has characters outside A-Z a-z 0-9 _ - ."


def listed_name_problem(name: str) -> str | None:
    """Why `name` cannot be a prompt's or a resource template's name, or None."""
    if not name:
        return "its name is empty"
    if len(name) > MAX_NAME:
        return f"its name is {len(name):,} characters long (at most {MAX_NAME})"
    if not name.isprintable():  # false for control, format, surrogate, private-use and unassigned characters
        return "its name has control or other unprintable characters"
    return None


def schema_problem(schema: Any) -> str | None:
    """Why `schema` cannot be a tool's inputSchema, or None. Cheap: shape only, not the whole meta-schema."""
    if not isinstance(schema, Mapping):
        return f"its inputSchema is a {type(schema).__name__}, not an object"
    kind = schema.get("type", "object")
    if kind != "object":
        return f"its inputSchema has type {shorten(repr(kind), 40)}, not 'object'"
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping) or not all(isinstance(s, Mapping | bool) for s in properties.values()):
        return "its inputSchema's properties are not a mapping of schemas"
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        return "its inputSchema's required is not a list of names"
    return None


def execution_problem(tool: types.Tool) -> str | None:
    """Why `tool` cannot be run through the gateway, or None."""
    if tool.execution is not None and tool.execution.task_support == "required":
        return "it runs only as a task (execution.taskSupport: required), and the gateway does not relay tasks"
    return None


def screen_tools(backend: str, tools: list[types.Tool], drops: Drops) -> list[types.Tool]:
    """The tools of `backend` that can be served, in the backend's order; the others go to `drops`."""
    kept: list[types.Tool] = []
    names: set[str] = set()
    for tool in tools:
        problem = name_problem(tool.name) or schema_problem(tool.input_schema) or execution_problem(tool)
        if problem is None and tool.name in names:
            problem = "the backend lists this name more than once (the first is kept)"
        if problem is not None:
            drops.add(backend, tool.name, problem)
            continue
        names.add(tool.name)
        kept.append(tool)
    return kept


def screen_prompts(backend: str, prompts: list[types.Prompt], drops: Drops) -> list[types.Prompt]:
    """The prompts of `backend` whose names can be served, in the backend's order; the others go to `drops`."""
    return _screen_names(backend, prompts, drops, "prompt")


def screen_templates(
    backend: str, templates: list[types.ResourceTemplate], drops: Drops
) -> list[types.ResourceTemplate]:
    """The resource templates of `backend` whose names can be served; the others go to `drops`."""
    return _screen_names(backend, templates, drops, "resource template")


def _screen_names(backend: str, items: list[NamedT], drops: Drops, kind: str) -> list[NamedT]:
    kept: list[NamedT] = []
    for item in items:
        problem = listed_name_problem(item.name)
        if problem is None:
            kept.append(item)
        else:
            drops.add(backend, item.name, problem, kind)
    return kept


class Drops:
    """The tools (prompts, resource templates) one catalogue build dropped; `log()` warns once per problem, a
    bounded number at a time."""

    _warned: OrderedDict[str, None] = OrderedDict()  # across builds: the same problem is not warned again

    def __init__(self) -> None:
        self.by_backend: dict[str, list[tuple[str, str, str]]] = {}

    def add(self, backend: str, name: str, problem: str, kind: str = "tool") -> None:
        self.by_backend.setdefault(backend, []).append((kind, name, problem))

    def __len__(self) -> int:
        return sum(len(dropped) for dropped in self.by_backend.values())

    def log(self) -> None:
        for backend, dropped in self.by_backend.items():
            new = [entry for entry in dropped if self._first_time(backend, *entry)]
            for kind, name, problem in new[:MAX_WARNINGS_PER_BACKEND]:
                logger.warning("backend %s: %s '%s' dropped: %s", backend, kind, _shown(name), problem)
            if len(new) > MAX_WARNINGS_PER_BACKEND:
                logger.warning(
                    "backend %s: %d more dropped (names taken, listed twice, names or schemas it cannot serve, "
                    "or tools that run only as tasks); the rest of it is served",
                    backend,
                    len(new) - MAX_WARNINGS_PER_BACKEND,
                )

    @classmethod
    def _first_time(cls, backend: str, kind: str, name: str, problem: str) -> bool:
        key = f"{backend}\0{kind}\0{name[:200]}\0{problem}"
        seen = key in cls._warned
        cls._warned[key] = None
        cls._warned.move_to_end(key)
        while len(cls._warned) > _REMEMBERED_WARNINGS:
            cls._warned.popitem(last=False)
        return not seen


def _shown(name: str) -> str:
    """`name` cut short, every character `str.isprintable` refuses escaped. `shorten` escapes controls and
    bidirectional marks, which is what any quoted text needs; a name dropped as unprintable may hold others
    (zero-width, private-use, unassigned), and the warning must show the reader what was wrong with it."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in shorten(name))
