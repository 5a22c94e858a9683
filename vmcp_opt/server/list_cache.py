"""Long list answers built once and shared: by the requests for the same list at once, and by later ones.

Each `tools/list` (and `prompts/list`, `resources/list`, `resources/templates/list`) over a long catalogue was
shaped and encoded for itself: 663 tools of ~200 KB made each answer 134 MB, and 6 lists at once took the
gateway from 269 MB to 1,192 MB. Here an answer is built by one flight per key (vmcp_opt/single_flight.py), its
outcome shared by the requests waiting meanwhile and kept for the ones after.

The key is the method, the protocol version (the answer's shape), and the identity of every item the caller is
shown, in order. Two callers share an answer only when they would be shown the very same objects, whatever their
policy's views: no caller can be given another's view (a Cedar principal's, server/listen.py's `ListViews`, or a
policy deciding on anything of the caller). An entry holds its items, so their ids are not reused while it is
kept. Entries of one catalogue generation are kept, the latest (`generation`, the catalogue object): a new
catalogue's first answer drops the ones before. At most `ENTRIES` answers and `MOST_BYTES` of them are kept, the
least recently used dropped first; an answer larger than `MOST_BYTES` is shared by its flight alone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

from vmcp_opt.single_flight import SingleFlight

# Answers kept: a few views (principals, protocol eras) of the catalogue now.
ENTRIES = 4
# Bytes of kept answers together (their encoded items: the shaped items' strings are the catalogue's own).
MOST_BYTES = 256 * 1024 * 1024
# Seconds a request waits for another's build of its answer (one shaper at a time: long lists wait their turn).
WAIT = 300.0


@dataclass(frozen=True)
class Built:
    """A shaped answer and the bytes it holds of its own."""

    answer: dict[str, Any]
    size: int


@dataclass
class _Entry:
    built: Built
    generation: object
    pinned: object  # the items the key names by identity: held, so their ids are not reused


def _overdue() -> Exception:
    return MCPError(types.INTERNAL_ERROR, f"the list answer was not built within {WAIT:g}s; list again")


class ListAnswers:
    """Shaped list answers by (method, version, items' identities); see the module."""

    def __init__(self, entries: int = ENTRIES, most_bytes: int = MOST_BYTES) -> None:
        self._entries = entries
        self._most_bytes = most_bytes
        self._kept: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self._generation: object = None
        self._flights: SingleFlight[Hashable, Built] = SingleFlight(WAIT, _overdue)

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    async def get(
        self, method: str, version: str, items: list[Any], generation: object, build: Callable[[], Awaitable[Built]]
    ) -> Built:
        """The answer for `items` listed by `method` under `version`: kept, being built, or built now by `build`."""
        key = (method, version, tuple(map(id, items)))

        async def fetch() -> Built:
            # Its worker thread runs to its end anyway: a first caller gone meanwhile leaves the answer to the rest.
            with anyio.CancelScope(shield=True):
                built = await build()
                self._keep(key, _Entry(built, generation, items))
            return built

        return await self._flights.get(key, fetch, ready=lambda: self._kept_for(key))

    def _kept_for(self, key: Hashable) -> Built | None:
        entry = self._kept.get(key)
        if entry is None:
            return None
        self._kept.move_to_end(key)
        return entry.built

    def _keep(self, key: Hashable, entry: _Entry) -> None:
        if entry.generation is not self._generation:
            self._generation = entry.generation
            for stale in [k for k, kept in self._kept.items() if kept.generation is not entry.generation]:
                self._drop(stale)
        if entry.built.size > self._most_bytes:
            return  # shared by its flight's waiters alone
        self._drop(key)
        self._kept[key] = entry
        self._bytes += entry.built.size
        while len(self._kept) > self._entries or self._bytes > self._most_bytes:
            self._drop(next(iter(self._kept)))

    def _drop(self, key: Hashable) -> None:
        entry = self._kept.pop(key, None)
        if entry is not None:
            self._bytes -= entry.built.size
