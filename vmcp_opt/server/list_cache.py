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
catalogue's first answer drops the ones before, and so does the catalogue's end (held weakly, it is freed once
replaced: its answers go then, not at the next long list). At most `ENTRIES` answers and `MOST_BYTES` of them are
kept, the least recently used dropped first; an answer larger than `MOST_BYTES` is shared by its flight alone.

An answer's bytes are what it holds of its own (`Built.size`): its JSON, and its shaped items, the dicts and lists
the SDK's serializer made and their keys (`shaped_bytes`; about nine tenths of it for tool definitions: counting the
JSON alone let the cache hold ten times its bound), and the entry's key and pinned items.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from itertools import chain, compress, repeat
from operator import is_
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

from vmcp_opt.single_flight import SingleFlight

logger = logging.getLogger(__name__)

# Answers kept: a few views (principals, protocol eras) of the catalogue now.
ENTRIES = 4
# Bytes of kept answers together (`Built.size`: their JSON and shaped items; the items' strings are the catalogue's).
MOST_BYTES = 256 * 1024 * 1024
# Seconds a request waits for another's build of its answer (one shaper at a time: long lists wait their turn).
WAIT = 300.0


@dataclass(frozen=True)
class Built:
    """A shaped answer and the bytes it holds of its own (its kept entry's key and pinned items too)."""

    answer: dict[str, Any]
    size: int


def shaped_bytes(items: list[Any]) -> int:
    """The bytes shaped items hold of their own: every dict and list (their tables), and the dicts' keys, which the
    serializer makes anew. Values that are not containers (strings, numbers) are the catalogue's own objects, not
    counted. Walked `SIZE_STEP` objects at a time, each step at C speed (`map`, `compress`): a Python step per
    object cost half again the build's time, and one C call over all of them would hold the GIL for 0.1 s."""
    total = sys.getsizeof(items)
    pending: list[tuple[list[Any], int]] = [(list(items), 0)]
    while pending:
        objects, start = pending.pop()
        if start + SIZE_STEP < len(objects):
            pending.append((objects, start + SIZE_STEP))
        own, children = _sized(objects[start : start + SIZE_STEP])
        total += own
        if children:
            pending.append((children, 0))
    return total


# Objects sized per step of `shaped_bytes`: ~5 ms of the GIL on a slow host.
SIZE_STEP = 8192
_GC_HEAD = sys.getsizeof([]) - [].__sizeof__()  # what `sys.getsizeof` adds to a container's own `__sizeof__`


def _sized(objects: list[Any]) -> tuple[int, list[Any]]:
    """The bytes of the dicts and lists among `objects` and of the dicts' keys, and what they hold."""
    kinds = list(map(type, objects))
    dicts: list[dict[Any, Any]] = list(compress(objects, map(is_, kinds, repeat(dict))))
    lists: list[list[Any]] = list(compress(objects, map(is_, kinds, repeat(list))))
    own = sum(map(dict.__sizeof__, dicts)) + sum(map(list.__sizeof__, lists)) + _GC_HEAD * (len(dicts) + len(lists))
    try:
        own += sum(map(str.__sizeof__, chain.from_iterable(dicts)))  # JSON's keys: strings, and not GC-tracked
    except TypeError:
        own += sum(map(sys.getsizeof, chain.from_iterable(dicts)))
    return own, list(chain(chain.from_iterable(map(dict.values, dicts)), chain.from_iterable(lists)))


def key_bytes(count: int) -> int:
    """What an entry of `count` items holds for its key (a tuple of their ids) and its pinned list of them."""
    return sys.getsizeof(()) + sys.getsizeof([]) + count * (2 * _POINTER + _ID_BYTES)


_POINTER = struct.calcsize("P")
_ID_BYTES = sys.getsizeof(1 << 40)  # an object's id: a large int


class _Generation:
    """The catalogue kept answers were listed from: held weakly when it can be, so that its end drops its answers
    (on the event loop, by `forget`); else (a value, in tests) held, and replaced only by the next one."""

    def __init__(self, catalogue: object, forget: Callable[[_Generation], None]) -> None:
        self._strong: object = None
        self._weak: weakref.ref[Any] | None = None
        try:
            loop = asyncio.get_running_loop()
            self._weak = weakref.ref(catalogue, lambda _: _call_soon(loop, forget, self))
        except (TypeError, RuntimeError):  # not weakly referable (a value), or no event loop to drop it on
            self._strong = catalogue

    def of(self, catalogue: object) -> bool:
        return (self._weak() if self._weak is not None else self._strong) is catalogue


def _call_soon(loop: asyncio.AbstractEventLoop, forget: Callable[[_Generation], None], gone: _Generation) -> None:
    """`forget(gone)` on `loop`: a catalogue may be freed on any thread, while the loop is using the cache."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is served from the cache any more
        loop.call_soon_threadsafe(forget, gone)


@dataclass
class _Entry:
    built: Built
    generation: _Generation
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
        self._generation: _Generation | None = None
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
                self._keep(key, built, generation, items)
            return built

        return await self._flights.get(key, fetch, ready=lambda: self._kept_for(key))

    def _kept_for(self, key: Hashable) -> Built | None:
        entry = self._kept.get(key)
        if entry is None:
            return None
        self._kept.move_to_end(key)
        return entry.built

    def _keep(self, key: Hashable, built: Built, catalogue: object, items: list[Any]) -> None:
        if self._generation is None or not self._generation.of(catalogue):
            self._forget_all()
            self._generation = _Generation(catalogue, self._forget)
        entry = _Entry(built, self._generation, items)
        if built.size > self._most_bytes:
            return  # shared by its flight's waiters alone
        self._drop(key)
        self._kept[key] = entry
        self._bytes += built.size
        while len(self._kept) > self._entries or self._bytes > self._most_bytes:
            self._drop(next(iter(self._kept)))
        logger.debug(
            "list answer kept: %d bytes; %d answers kept, %d bytes of %d",
            built.size,
            len(self),
            self._bytes,
            self._most_bytes,
        )

    def _forget(self, gone: _Generation) -> None:
        """`gone`'s catalogue was freed: its answers go with it (none are of a later one)."""
        if gone is self._generation:
            logger.debug("the catalogue of %d kept list answers was replaced: dropped", len(self))
            self._forget_all()
            self._generation = None

    def _forget_all(self) -> None:
        for key in list(self._kept):
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        entry = self._kept.pop(key, None)
        if entry is not None:
            self._bytes -= entry.built.size
