"""Conflict resolution: how names from different backends become one namespace.

- `prefix`: every name becomes `prefix_format` (`{backend}_{name}`); a name set by an override is kept.
- `priority`: names stay; on a collision the backend earlier in `priority` (then config order) wins and
  the other's item is dropped and logged.
- `manual`: names stay; a conflicting tool that no override renames is dropped, naming both backends and
  the override that would serve both (the backend earlier in `priority`, then config order, keeps the name).
In every strategy a tool whose exposed name is taken or breaks the name rules is dropped (screening.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Generic, TypeVar

from vmcp_opt.aggregation.screening import Drops, name_problem
from vmcp_opt.config import AggregationConfig
from vmcp_opt.display import shorten

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")


@dataclass(frozen=True)
class Candidate(Generic[ItemT]):
    backend: str
    original_name: str
    name: str  # after overrides
    fixed: bool  # an override chose this name: it is never prefixed
    item: ItemT


# Items logged one by one per backend and kind in a catalogue build when another backend holds them.
SHADOWED_LOGGED = 5


class Shadowed:
    """What one catalogue build did not take from a backend because a backend (another, or itself earlier in
    its list) holds it: a resource URI, a URI template, a name under `priority`. One line each was logged
    before: two copies of a server with 50,000 resources wrote 50,000 lines at every rebuild. Now
    `SHADOWED_LOGGED` lines a backend and kind, then one line counting the rest."""

    def __init__(self) -> None:
        self._by_backend: dict[tuple[str, str], list[tuple[str, str]]] = {}

    def add(self, backend: str, kind: str, line: str, holder: str) -> None:
        """`line`: what is logged for this item when it is among the first few."""
        self._by_backend.setdefault((backend, kind), []).append((line, holder))

    def served_twice(self, backend: str, kind: str, uri: str, holder: str) -> None:
        if holder == backend:
            self.add(
                backend, kind, f"{kind} {shorten(uri)}: listed more than once by {backend}, the first kept", holder
            )
        else:
            self.add(backend, kind, f"{kind} {shorten(uri)}: served by {holder}, {backend}'s copy dropped", holder)

    def log(self) -> None:
        for (backend, kind), dropped in self._by_backend.items():
            for line, _ in dropped[:SHADOWED_LOGGED]:
                logger.info("%s", line)
            if len(dropped) > SHADOWED_LOGGED:
                logger.info(
                    "backend %s: %d more %ss dropped, already held (by %s)",
                    backend,
                    len(dropped) - SHADOWED_LOGGED,
                    kind,
                    ", ".join(sorted({holder for _, holder in dropped[SHADOWED_LOGGED:]})),
                )


def _rename(candidate: Candidate[ItemT]) -> str:
    return f"aggregation.tools.{candidate.backend}.overrides.{shorten(candidate.original_name)}.name"


class ConflictResolver:
    def __init__(self, config: AggregationConfig, backend_order: list[str], shadowed: Shadowed | None = None) -> None:
        self.config = config
        self.shadowed = shadowed if shadowed is not None else Shadowed()  # the caller logs it once built
        ranked = [name for name in config.priority if name in backend_order]
        self.rank = {name: i for i, name in enumerate(ranked + [b for b in backend_order if b not in ranked])}

    def resolve(self, candidates: list[Candidate[ItemT]], kind: str, drops: Drops) -> dict[str, Candidate[ItemT]]:
        """Exposed name → the candidate that owns it; a candidate that cannot have its name goes to `drops`."""
        strategy = self.config.conflict_resolution
        named = [self._exposed(c) if strategy == "prefix" else c for c in candidates]
        # Priority order also decides which of two equal names is seen first by the other strategies.
        named.sort(key=lambda c: self.rank.get(c.backend, len(self.rank)))
        owners: dict[str, Candidate[ItemT]] = {}
        for candidate in named:
            if kind == "tool" and (problem := name_problem(candidate.name)) is not None:
                drops.add(candidate.backend, candidate.original_name, self._unnamable(candidate, problem))
                continue
            holder = owners.get(candidate.name)
            if holder is None:
                owners[candidate.name] = candidate
            elif strategy == "priority" and holder.backend != candidate.backend:
                line = (
                    f"{kind} {shorten(candidate.name)!r}: backend {holder.backend} wins over {candidate.backend} "
                    f"(priority); {candidate.backend}'s is dropped"
                )
                self.shadowed.add(candidate.backend, kind, line, holder.backend)
            elif strategy == "manual" and kind != "tool" and holder.backend != candidate.backend:
                # Overrides exist for tools only; other kinds fall back to the prefix format.
                exposed = self._exposed(candidate)
                taken = owners.get(exposed.name)
                if taken is None:
                    owners[exposed.name] = exposed
                else:  # was lost without a word: `a` serves "review" and "b_review", `b` "review"
                    drops.add(exposed.backend, exposed.original_name, self._taken(kind, exposed, taken), kind)
            else:
                drops.add(candidate.backend, candidate.original_name, self._taken(kind, candidate, holder), kind)
        return owners

    def _taken(self, kind: str, candidate: Candidate[ItemT], holder: Candidate[ItemT]) -> str:
        """Why `candidate` lost its exposed name to `holder`, and how to serve both."""
        name = shorten(candidate.name)
        if holder.backend == candidate.backend:
            return f"another of its {kind}s is also exposed as '{name}' (the first is kept)"
        reason = f"backend '{holder.backend}' already exposes '{name}'"
        if holder.fixed:
            reason += f" (its {kind} '{shorten(holder.original_name)}', renamed by {_rename(holder)})"
        if kind != "tool":
            return reason
        if candidate.fixed:  # the user chose this name: telling them to set the override they set misleads
            return f"{reason}; choose another name in {_rename(candidate)}"
        return f"{reason}; to serve both, set {_rename(candidate)}"

    def _unnamable(self, candidate: Candidate[ItemT], problem: str) -> str:
        """Why a tool cannot be served under the name it would have, naming the setting that made that name."""
        name = shorten(candidate.name)
        if candidate.fixed:
            return f"{_rename(candidate)} is '{name}': {problem}; choose another"
        if candidate.name == candidate.original_name or name_problem(candidate.original_name) is not None:
            return f"{problem}; set {_rename(candidate)}"
        # The backend's own name is fine: aggregation.prefix_format made it one no client may use.
        made_by = f"aggregation.prefix_format {shorten(self.config.prefix_format)!r}"
        return f"exposed as '{name}' by {made_by}, {problem}; change it, or set {_rename(candidate)}"

    def _exposed(self, candidate: Candidate[ItemT]) -> Candidate[ItemT]:
        if candidate.fixed:
            return candidate
        name = self.config.prefix_format.format(backend=candidate.backend, name=candidate.name)
        return Candidate(candidate.backend, candidate.original_name, name, candidate.fixed, candidate.item)
