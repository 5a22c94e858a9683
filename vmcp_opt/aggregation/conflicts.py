"""Conflict resolution: how names from different backends become one namespace.

- `prefix`: every name becomes `prefix_format` (`{backend}_{name}`); a name set by an override is kept.
- `priority`: names stay; on a collision the backend earlier in `priority` (then config order) wins and
  the other's item is dropped and logged.
- `manual`: names stay; overrides must rename every conflicting tool, or loading fails naming both backends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Generic, TypeVar

from vmcp_opt.config import AggregationConfig

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")


class ConflictError(Exception):
    """Two backends expose the same name and the strategy cannot resolve it."""


@dataclass(frozen=True)
class Candidate(Generic[ItemT]):
    backend: str
    original_name: str
    name: str  # after overrides
    fixed: bool  # an override chose this name: it is never prefixed
    item: ItemT


class ConflictResolver:
    def __init__(self, config: AggregationConfig, backend_order: list[str]) -> None:
        self.config = config
        ranked = [name for name in config.priority if name in backend_order]
        self.rank = {name: i for i, name in enumerate(ranked + [b for b in backend_order if b not in ranked])}

    def resolve(self, candidates: list[Candidate[ItemT]], kind: str) -> dict[str, Candidate[ItemT]]:
        """Exposed name → the candidate that owns it."""
        strategy = self.config.conflict_resolution
        named = [self._exposed(c) if strategy == "prefix" else c for c in candidates]
        # Priority order also decides which of two equal names is seen first by the other strategies.
        named.sort(key=lambda c: self.rank.get(c.backend, len(self.rank)))
        owners: dict[str, Candidate[ItemT]] = {}
        for candidate in named:
            holder = owners.get(candidate.name)
            if holder is None:
                owners[candidate.name] = candidate
            elif strategy == "priority" and holder.backend != candidate.backend:
                logger.info(
                    "%s %r: backend %s wins over %s (priority); %s's is dropped",
                    kind,
                    candidate.name,
                    holder.backend,
                    candidate.backend,
                    candidate.backend,
                )
            elif strategy == "manual" and kind != "tool" and holder.backend != candidate.backend:
                # Overrides exist for tools only; other kinds fall back to the prefix format.
                exposed = self._exposed(candidate)
                owners.setdefault(exposed.name, exposed)
            else:
                raise ConflictError(
                    f"{kind} name {candidate.name!r} is exposed by both backends "
                    f"'{holder.backend}' and '{candidate.backend}'"
                    + (
                        f": add aggregation.tools.{candidate.backend}.overrides.{candidate.original_name}.name "
                        "(or use the prefix or priority strategy)"
                        if strategy == "manual"
                        else ""
                    )
                )
        return owners

    def _exposed(self, candidate: Candidate[ItemT]) -> Candidate[ItemT]:
        if candidate.fixed:
            return candidate
        name = self.config.prefix_format.format(backend=candidate.backend, name=candidate.name)
        return Candidate(candidate.backend, candidate.original_name, name, candidate.fixed, candidate.item)
