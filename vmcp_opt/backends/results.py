"""What a backend returns, bounded: its size (`limits.max_result_bytes`) and its values (`limits.max_result_values`).

The size is measured on the parsed result by walking it and adding up the lengths of its strings (text,
base64 data, URIs, structured content), about its JSON size; the walk stops as soon as the cap is passed. A
walk is pure Python, ~1 s for a million values: where the transport knows the answer's raw size it measures
instead (backends/stdio.py: a line within the cap carries a result within it), and elsewhere
`measured_result` walks on the event loop only as far as `INLINE_CHARS`, the rest in a worker thread.

The values are counted before an answer is parsed, as its bytes arrive (`ValueCounter`, at C speed, a chunk at a
time: one pass over a 10 MB answer on the event loop held it 100-600 ms): parsing and validating one holds the event
loop in proportion to them, from a worker thread too. Told the limit, it counts naively first (every `{`, `[` and
`,`: an upper bound, a tenth of the exact count's cost on a small answer) and exactly only past the limit. A listing page (`ListingIds`) has a budget of its own,
`page_values`: its items are bounded by the listing's budgets (backends/listing.py), but not the rest of the page.

A result's lone surrogates (unpaired `\\ud800`-`\\udfff` escapes) become U+FFFD as it is measured (`measured_result`,
backends/lone_surrogates.py): left in, the answer could not be written, and its client got a 500 or a line its SDK
could not parse. A text holding one is no text a client can read anyway; the rest of it reaches the client as sent.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Any, TypeVar

import anyio.to_thread
import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from vmcp_opt.backends.lone_surrogates import mend, suspected

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")
_NODE = 8  # what a number, a bracket or a key's quotes add to the JSON
_SCALARS = frozenset({int, float, bool, type(None)})  # JSON's leaves other than strings, by their exact type
INLINE_CHARS = 64 * 1024  # what `measured_result` walks on the event loop: a few milliseconds at most


def exceeds(value: Any, cap: int) -> bool:
    """Whether `value` (a result model, or JSON-like data) takes more than about `cap` bytes as JSON."""
    return json_size(value, cap) is None


def json_size(value: Any, cap: int) -> int | None:
    """About `value`'s size as JSON (a result model, or JSON-like data), or None once it passes `cap`: the walk
    stops there."""
    total = 0
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or kind is bytes:
            total += len(item) + 2
        elif kind in _SCALARS:  # a leaf known by its type: pydantic's `isinstance(_, BaseModel)` runs Python code
            total += _NODE
        elif isinstance(item, str | bytes):
            total += len(item) + 2
        elif isinstance(item, BaseModel):
            extend(item.__dict__.values())
            if item.__pydantic_extra__:
                extend(item.__pydantic_extra__.values())
            total += _NODE
        elif isinstance(item, dict):
            if 4 * len(item) > cap - total:  # each key and value adds 2 at least: past the cap, unwalked
                return None
            extend(item.keys())
            extend(item.values())
            total += _NODE
        elif isinstance(item, list | tuple):
            if 2 * len(item) > cap - total:  # nor are 400,000 items copied onto the stack (~10 ms) to learn it
                return None
            extend(item)
            total += _NODE
        else:
            total += _NODE
        if total > cap:
            return None
    return total


def bounded_result(backend: str, result: ResultT, cap: int) -> ResultT:
    """`result` when it is within `cap`; otherwise a tool's error result (for tools/call) or an MCPError (-32603).

    Neither counts as a failure for the backend's circuit breaker: the result is large, not invalid, and the
    backend that sent it is healthy (backends/errors.py, `broken_answer`, says why)."""
    if not exceeds(result, cap):
        return result
    message = (
        f"backend '{backend}' returned a result larger than {cap:,} bytes (limits.max_result_bytes); "
        "it was not passed on"
    )
    logger.warning("%s", message)
    if isinstance(result, types.CallToolResult):
        error = types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)
        return error  # type: ignore[return-value]
    raise MCPError(types.INTERNAL_ERROR, message)


async def measured_result(backend: str, result: ResultT, cap: int, *, measured: bool) -> ResultT:
    """`bounded_result` without holding the event loop, its lone surrogates mended (`mended_result`): `measured`,
    the transport has bounded the answer already (backends/stdio.py, `measures_results`); a result within
    `INLINE_CHARS` is known to be so, and mended, on the loop; a longer one is measured (unless `measured`) and
    mended in a worker thread (pure-Python walks: the loop runs between their turns at the GIL). Only a backend whose
    stdio output has shown a lone surrogate (`lone_surrogates.suspected`) is walked for them: a measured transport
    parses long lines with `json`, which lets them through; an HTTP backend's bodies are mended as bytes."""
    mending = suspected(backend)  # a backend whose output never showed a lone surrogate: nothing to walk for
    if measured and not mending:
        return result
    if json_size(result, min(cap, INLINE_CHARS)) is not None:
        return mended_result(backend, result) if mending else result
    if measured:
        return await anyio.to_thread.run_sync(mended_result, backend, result)
    return await anyio.to_thread.run_sync(_bounded_and_mended, backend, result, cap, mending)


def _bounded_and_mended(backend: str, result: ResultT, cap: int, mending: bool) -> ResultT:
    bounded = bounded_result(backend, result, cap)
    return bounded if bounded is not result or not mending else mended_result(backend, result)


_MENDED_BACKENDS: set[str] = set()  # warned about at WARNING once; later results at DEBUG


def mended_result(backend: str, result: ResultT) -> ResultT:
    """`result` with every lone surrogate replaced by U+FFFD, in place, with a warning naming the backend."""
    mended = mend(result)
    if mended:
        level = logging.DEBUG if backend in _MENDED_BACKENDS else logging.WARNING
        _MENDED_BACKENDS.add(backend)
        logger.log(
            level,
            "backend %s: a result had lone surrogates (unpaired \\ud800-\\udfff escapes) in %d of its strings: passed "
            "on with U+FFFD in their place",
            backend,
            mended,
        )
    return result


# Requests whose answers are listing pages, held to `page_values` rather than `limits.max_result_values`.
LISTING_METHODS = frozenset({"tools/list", "resources/list", "resources/templates/list", "prompts/list"})
LISTINGS_REMEMBERED = 256  # listing requests unanswered at once that one process's reader tells apart
# Values of one listing page, at least: 10,000 tools of 100 values each (a rich schema's), or 50,000
# (limits.max_listed_items_per_backend's default) of 20. Parsing and validating a page of that many holds the event
# loop a few hundred ms; 4.3 million held it over a second at every re-fetch. A bigger catalogue comes in pages.
MAX_PAGE_VALUES = 1024 * 1024


def page_values(max_result_values: int) -> int:
    """The most values one listing page may hold: `MAX_PAGE_VALUES`, or `limits.max_result_values` when larger."""
    return max(MAX_PAGE_VALUES, max_result_values)


def too_many_values(backend: str, counted: int, most: int, *, listing: bool, whole: bool = True) -> str:
    """What a refused answer says: `counted` values (`whole`: all of the answer's; else as far as it was read)
    against `most`, `limits.max_result_values` or, for a listing page (`listing`), `page_values`."""
    about = "about" if whole else "at least"
    if listing:
        return (
            f"backend '{backend}' answered a listing page with {about} {counted:,} values, more than the {most:,} "
            f"one page may hold (limits.max_result_values or {MAX_PAGE_VALUES:,}, whichever is larger)"
        )
    return (
        f"backend '{backend}' answered with {about} {counted:,} values, more than limits.max_result_values "
        f"({most:,}) allows"
    )


# The rest of a JSON string from just past its opening quote (or from inside it): up to its closing quote, or to the
# text's end, where a backslash may wait for the byte it escapes.
_STRING_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)
# A text outside strings, as far as it stays outside or in strings that close: where it stops, a string opens
# that does not close within the text. Possessive throughout: linear, whatever the text.
_OUTSIDE = re.compile(rb'(?:[^"]*+"[^"\\]*+(?:\\.[^"\\]*+)*+")*+[^"]*+', re.DOTALL)
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)


# Bytes of pieces a `ValueCounter` keeps (references, not copies) while its naive count stands: past them it counts
# exactly, so that a body read through it is not held for the response's life. A small answer is one piece.
NAIVE_HELD_BYTES = 64 * 1024


class ValueCounter:
    """The values of a JSON text fed in pieces, as they arrive: its `{`, `[` and `,` outside its strings (a CSV
    text is one value, not one per comma), exact for valid JSON. Whether the piece so far ends inside a string, and
    after a backslash there, carries over to the next; a piece costs a few C-speed passes over its own bytes.

    Given `most` (the limit the caller holds the text to), `values` is first the naive count of those bytes,
    strings' included: never fewer than the values, so within `most` it settles the caller's question at a tenth of
    the cost (~1 us for a small answer, not ~10). Once it passes `most`, or the pieces kept to recount pass
    `NAIVE_HELD_BYTES`, they are counted exactly and so is the rest: `values > most` only when the text holds more."""

    def __init__(self, most: int | None = None) -> None:
        self.values = 0
        self._most = most  # None: exact from the first piece
        self._held: list[bytes] = []  # the pieces counted naively, to recount exactly
        self._held_bytes = 0
        self._in_string = False
        self._escaped = False  # the last piece ended inside a string with a backslash: the next byte is escaped

    def feed(self, piece: bytes) -> None:
        if self._most is None:
            self._feed_exact(piece)
            return
        self.values += _structural(piece)
        self._held.append(piece)
        self._held_bytes += len(piece)
        if self.values > self._most or self._held_bytes > NAIVE_HELD_BYTES:
            self._recount()

    def _recount(self) -> None:
        """Count the pieces so far exactly, and every later one."""
        held, self._held, self._held_bytes, self._most = self._held, [], 0, None
        self.values = 0
        for piece in held:
            self._feed_exact(piece)

    def _feed_exact(self, piece: bytes) -> None:
        start = self._string_end(piece) if self._in_string else 0
        if start is None:
            return
        outside = piece[start:] if start else piece
        if b'"' in outside:
            end = _matched_end(_OUTSIDE, outside)
            if end < len(outside):  # a string opens at `end` and goes on into the next piece
                self._in_string = True
                self._escaped = _matched_end(_STRING_REST, outside, end + 1) < len(outside)
                outside = outside[:end]
            outside = _STRING.sub(b"", outside)
        self.values += _structural(outside)

    def _string_end(self, piece: bytes) -> int | None:
        """Where `piece` leaves the string the text is in (just past its closing quote), or None if it does not."""
        start = 0
        if self._escaped:
            if not piece:
                return None
            start, self._escaped = 1, False
        end = _matched_end(_STRING_REST, piece, start)
        if end == len(piece):
            return None
        if piece[end] != ord('"'):  # a backslash, the piece's last byte
            self._escaped = True
            return None
        self._in_string = False
        return end + 1


def _matched_end(pattern: re.Pattern[bytes], text: bytes, start: int = 0) -> int:
    found = pattern.match(text, start)
    return found.end() if found is not None else start  # each of them matches the empty text: never None


def value_count(text: bytes, most: int) -> int:
    """About the values a JSON text held whole holds (a workflow step's output), counted at C speed without parsing
    it: its `{`, `[` and `,` while they come to `most` or fewer (those inside strings too: never fewer than there are);
    past it, only those outside its strings (a CSV text is one value, not one per comma), or, for a text of more than
    `4 * most` strings, a quarter of their quotes (a string in an array takes 2 and a comma, a key with a string value
    4 and a comma). A transport counts what it reads as it comes instead (`ValueCounter`)."""
    naive = _structural(text)
    if naive <= most:
        return naive
    if b"\\" in text:  # an escaped backslash, then an escaped quote, is no string's end
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    quotes = text.count(b'"')
    if not quotes:
        return naive
    if quotes // 4 > most:
        return quotes // 4  # splitting at millions of quotes costs more than parsing
    return _structural(b"".join(text.split(b'"')[0::2]))


def _structural(text: bytes) -> int:
    return text.count(b"{") + text.count(b"[") + text.count(b",")


class ListingIds:
    """The ids of listing requests written to the backend and not yet answered, the oldest forgotten past
    `LISTINGS_REMEMBERED` (a request whose answer never came)."""

    def __init__(self) -> None:
        self._ids: OrderedDict[types.RequestId, None] = OrderedDict()

    def sent(self, message: types.JSONRPCMessage) -> None:
        if isinstance(message, types.JSONRPCRequest) and message.method in LISTING_METHODS:
            self._ids[message.id] = None
            if len(self._ids) > LISTINGS_REMEMBERED:
                self._ids.popitem(last=False)

    def answered(self, request_id: types.RequestId | None) -> bool:
        """Whether `request_id` is a listing request's (forgotten from now on)."""
        if request_id is None or request_id not in self._ids:
            return False
        del self._ids[request_id]
        return True
