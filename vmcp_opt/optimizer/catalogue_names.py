"""The searchable tools' names, by backend: which backends a find_tool `backends` filter may name (under a
policy, only those with a tool the caller may use), and which starting backends its answer may name (`Starting`).
Which tools a wrong `call_tool` name likely meant is the router's (`Router.meant`), as for a direct call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from vmcp_opt.display import shorten
from vmcp_opt.routing import ProvidedTool, ToolCall

# Backend names a find_tool error repeats (a client chooses how many it sends, and how long each is).
NAMED_BACKENDS = 8


class CatalogueNames:
    def __init__(self) -> None:
        self.sources: set[str] = set()
        # Each backend's searchable tools: which backends a caller under a policy can search.
        self.tools_of: dict[str, list[str]] = {}

    def update(self, tools: Sequence[ProvidedTool]) -> None:
        tools_of: dict[str, list[str]] = {}
        for tool in tools:
            tools_of.setdefault(tool.source, []).append(tool.name)
        self.sources = {tool.source for tool in tools}
        self.tools_of = tools_of

    async def backends_problem(
        self, backends: list[str], allowed: ToolCall | None, why_no_tools: Callable[[str], str | None]
    ) -> str | None:
        """Why find_tool cannot search `backends`, or None: an empty list (the schema says "all when omitted";
        an empty list would search nothing), a configured backend with no tools here, or an unknown name.
        Under a policy that restricts the caller, a backend none of whose tools it may use is as unknown as
        one that does not exist, and only backends it can search are named: the error must not tell a caller
        which other backends exist."""
        if not backends:
            return "an empty list searches no backend; leave it out (or null) to search them all"
        requested = list(dict.fromkeys(backends))
        # The call when a policy may hide tools from its caller; None when every caller may use everything.
        restricted = allowed if restricts(allowed) else None
        searchable = self.sources
        if restricted is not None:
            searchable = await self.usable_backends(restricted, [name for name in requested if name in self.sources])
        missing = [name for name in requested if name not in searchable]
        if not missing:
            return None
        if restricted is not None:
            names = [shorten(name) for name in missing[:NAMED_BACKENDS]]
            more = f" and {len(missing) - NAMED_BACKENDS} more" if len(missing) > NAMED_BACKENDS else ""
            yours = sorted(await self.usable_backends(restricted, sorted(self.sources)))
            return (
                f"no backend you can search is named {names}{more} (unknown, not connected, or none of its tools "
                f"is yours to use); you can search: {yours}"
            )
        problems, unknown = [], []
        for name in missing[:NAMED_BACKENDS]:
            why = why_no_tools(name)
            if why is None:
                unknown.append(shorten(name))
            else:
                problems.append(f"backend '{shorten(name)}' is {shorten(why, 300)}")
        if unknown:
            problems.append(f"unknown backend(s) {unknown}; known: {sorted(self.sources)}")
        if len(missing) > NAMED_BACKENDS:
            problems.append(f"{len(missing) - NAMED_BACKENDS} more not shown")
        return "; ".join(problems)

    async def usable_backends(self, allowed: ToolCall, names: list[str]) -> set[str]:
        """Which backends of `names` serve at least one tool `allowed`'s caller may use."""
        router, caller = allowed.router, allowed.caller
        usable = await router.usable_tools_async(caller)
        if usable is not None:
            return {name for name in names if any(tool in usable for tool in self.tools_of.get(name, ()))}

        def first_permitted() -> set[str]:
            # A policy asked tool by tool: a backend's tools until one is permitted, off the event loop.
            return {
                name for name in names if any(router.may_use(caller, [tool]) for tool in self.tools_of.get(name, ()))
            }

        return await anyio.to_thread.run_sync(first_permitted)


def restricts(allowed: ToolCall | None) -> bool:
    """Whether a policy may hide tools from `allowed`'s caller: False without a call, or when every caller may
    use everything."""
    return allowed is not None and not getattr(allowed.router.policy, "allows_everything", False)


@dataclass(frozen=True)
class Starting:
    """The backends still on their first connection attempt, as find_tool tells one caller of them. Named only when
    no policy may hide a backend from the caller: whether it may use any of a backend's tools cannot be asked
    before they are listed (Cedar decides per tool, on its name and annotations; no action is about a backend
    alone), and a backend it may use none of must stay as unknown as one that does not exist
    (`CatalogueNames.backends_problem`). A restricted caller is told only that some backends are starting."""

    names: tuple[str, ...]
    named: bool

    @classmethod
    def told(cls, names: Sequence[str], allowed: ToolCall | None) -> Starting:
        return cls(tuple(names), not restricts(allowed))

    def note(self, answer: dict[str, Any]) -> str | None:
        """The answer's note on starting backends (None when none is), adding `backends_starting` to `answer`
        when they may be named. Plainly, so an agent does not conclude that a tool it needs does not exist."""
        if not self.names:
            return None
        if not self.named:
            return "some backends are still starting; their tools are not searched yet"
        answer["backends_starting"] = list(self.names)
        return f"backends still starting: {', '.join(self.names)}; their tools are not searched yet"
