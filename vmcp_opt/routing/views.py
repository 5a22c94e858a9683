"""Views of the tools kept per catalogue: which names a caller may both see and call, asked of a
`BatchPolicy` once per principal and catalogue rather than tool by tool on every list and search
(`ToolViews`); and the providers' listed tools merged once rather than on every `tools/list`
(`MergedToolList`)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, TypeGuard

import anyio

from vmcp_opt.auth import Caller
from vmcp_opt.routing.policy import BatchPolicy, Operation, Policy, Target

if TYPE_CHECKING:
    import mcp_types as types

    from vmcp_opt.routing.providers import ProvidedTool, ToolProvider

# Principals whose usable tool set is kept (per catalogue); past it the oldest is dropped.
VIEWS_KEPT = 512

ToolTarget = Callable[["ProvidedTool", Operation], Target]


class ToolViews:
    def __init__(self, current: Callable[[], object], tools: Callable[[], dict[str, ProvidedTool]], target: ToolTarget):
        self._current = current  # the catalogue now: a view is valid for the one it was computed for
        self._tools = tools
        self._target = target
        # Per principal (`BatchPolicy.principal_key`): the catalogue and the tool names usable in it.
        self._views: dict[Hashable, tuple[object, frozenset[str]]] = {}

    def usable(self, policy: Policy, caller: Caller) -> frozenset[str] | None:
        """The names of every tool the caller may see and call; None when the policy allows everything or
        cannot be asked for a whole catalogue (then each item is asked on its own)."""
        if not _batched(policy):
            return None
        key = policy.principal_key(caller)
        catalog = self._current()
        cached = self._views.get(key)
        if cached is not None and cached[0] is catalog:
            return cached[1]
        tools = self._tools()
        targets = [t for p in tools.values() for t in (self._target(p, "list"), self._target(p, "use"))]
        decisions = policy.decide_all(caller, targets)
        names = frozenset(
            name for i, name in enumerate(tools) if decisions[2 * i].allowed and decisions[2 * i + 1].allowed
        )
        if len(self._views) >= VIEWS_KEPT:
            self._views.pop(next(iter(self._views)))
        self._views[key] = (catalog, names)
        return names

    async def usable_async(self, policy: Policy, caller: Caller) -> frozenset[str] | None:
        """`usable`, computed off the event loop when it is not known yet (a large catalogue costs one batch
        of policy evaluations per principal)."""
        if _batched(policy):
            cached = self._views.get(policy.principal_key(caller))
            if cached is None or cached[0] is not self._current():
                return await anyio.to_thread.run_sync(self.usable, policy, caller)
        return self.usable(policy, caller)

    def forget(self) -> None:
        """The tools or the policy changed: every principal's view is computed again when next asked."""
        self._views = {}


def _batched(policy: Policy) -> TypeGuard[BatchPolicy]:
    return not getattr(policy, "allows_everything", False) and _batch_type(type(policy))


@cache
def _batch_type(kind: type) -> bool:
    """Whether a policy class has `BatchPolicy`'s methods: kept per class, since a runtime-checkable
    Protocol's `isinstance` walks its members (~30 µs) and tools/list and find_tool each asked it."""
    return all(callable(getattr(kind, name, None)) for name in ("decide", "decide_all", "principal_key"))


@dataclass(frozen=True)
class MergedTools:
    """The providers' listed tools merged, and the views they were merged from."""

    views: list[Sequence[ProvidedTool]]
    provided: list[ProvidedTool]
    tools: list[types.Tool]


class MergedToolList:
    """The providers' listed tools, the first provider winning a name. Kept while every provider lists the
    same tools (the same objects: providers keep their views per catalogue): at 50,000 tools the merge held
    the event loop ~27 ms per `tools/list` on a slow host."""

    def __init__(self) -> None:
        self._kept: MergedTools | None = None

    def of(self, providers: Sequence[ToolProvider]) -> MergedTools:
        views = [provider.listed() for provider in providers]
        kept = self._kept
        if kept is not None and _same_views(kept.views, views):
            return kept
        seen: dict[str, ProvidedTool] = {}
        for view in views:
            for provided in view:
                seen.setdefault(provided.name, provided)
        provided_tools = list(seen.values())
        self._kept = MergedTools(views, provided_tools, [provided.tool for provided in provided_tools])
        return self._kept

    def forget(self) -> None:
        """The catalogue changed: merge afresh (a provider might have changed a view in place)."""
        self._kept = None


def _same_views(old: list[Sequence[ProvidedTool]], new: list[Sequence[ProvidedTool]]) -> bool:
    """Whether `new` lists the same tools as `old`: the same view, or (a provider that builds its small list
    afresh on each call) the same objects in the same order."""
    return len(old) == len(new) and all(
        a is b or (len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True)))
        for a, b in zip(old, new, strict=True)
    )
