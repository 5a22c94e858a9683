"""Lone surrogates in what a backend sends, replaced by U+FFFD where its messages are taken in.

JSON lets a string hold an escape such as `\\ud800` that pairs with no other: Python's `json` decodes it into a `str`
that UTF-8 cannot encode, and every writer of the gateway's answers (pydantic's `model_dump_json`, the SDK's
transports) then fails, or, falling back to escapes, writes what the SDK's client cannot parse. One tool description
holding one made `tools/list` fail for every client, and a tool's result made its POST a 500. A surrogate left in
a text is no character, so nothing is lost when it becomes U+FFFD, the replacement character, as a UTF-8 decoder
with `errors="replace"` would make it; the rest of the text is served as sent. A name or URI holding one is another
matter: it is what a client sends back, and U+FFFD would name something the backend never listed
(`identity_problem`: backends/listing.py drops such items instead).

After `json.loads` a surrogate in a `str` is always lone (a valid pair becomes one character), so finding one is a
search of the non-ASCII strings only (`str.isascii` is O(1)).

An HTTP backend's bodies are mended as bytes instead (`EscapeMender`, from backends/http_bodies.py), before the SDK's
client parses them with pydantic, which refuses a message holding such an escape: there is no parsed message to mend.
A body without a `\\ud`/`\\uD` costs one C search (0.4 ms for 10 MB); one made of candidates about 1 µs each
(10 MB of lone escapes: 2.4 s, of escaped pairs: 0.9 s), bounded by `limits.max_result_bytes`.

A stdio backend's parsed messages are walked (`mend`) only once its output has shown a line that may hold one
(`note_line`, from backends/stdio.py: a C search of the line, then a linear regex): walking every result and
notification of every backend cost each proxied call ~0.14 M instructions (4 %), for a case no healthy backend has.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import BaseModel

from vmcp_opt.display import shorten

logger = logging.getLogger(__name__)

# What a backend's line holding a lone surrogate shows: a high `\uD800`-`\uDBFF` escape no low one follows, a low
# `\uDC00`-`\uDFFF` one no high one precedes, or the raw bytes UTF-8 would give one (`json.loads` of bytes decodes
# with surrogatepass). An escaped backslash before it (`\\ud800`, text) matches too: a backend then only costs a
# walk. Fixed-width alternatives and look-arounds, nothing repeated inside a repetition: linear in the line.
_LONE_IN_LINE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\xed[\xa0-\xbf]"
)
# Backends (configured names: a bounded set) whose output has shown one; only their messages are walked.
_SUSPECTED: set[str] = set()


def note_line(backend: str, line: bytes) -> None:
    """`backend`'s messages are walked for lone surrogates from now on if `line` may hold one."""
    if backend not in _SUSPECTED and (b"\\u" in line or b"\xed" in line) and _LONE_IN_LINE.search(line):
        _SUSPECTED.add(backend)


def suspected(backend: str) -> bool:
    """Whether `backend`'s stdio output has shown what may be a lone surrogate (`note_line`)."""
    return backend in _SUSPECTED


REPLACEMENT = "\ufffd"
_LONE = re.compile("[\ud800-\udfff]")
# By list, the fields that name its items (as JSON, then as models): a client sends them back, so they are not mended.
IDENTITY_FIELDS = {
    "tools/list": ("name",),
    "prompts/list": ("name",),
    "resources/list": ("uri",),
    "resources/templates/list": ("name", "uriTemplate", "uri_template"),
}
MAX_WARNINGS = 20  # items dropped from one page, warned one by one
# (backend, method) of lists whose lone surrogates were already warned about (later ones are logged at debug).
_MENDED_LISTS: set[tuple[str, str]] = set()
_KINDS = {"tools/list": "tool", "resources/list": "resource", "resources/templates/list": "resource template"}


def has_lone(text: str) -> bool:
    """Whether `text` holds a lone surrogate."""
    return not text.isascii() and _LONE.search(text) is not None


def mended_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD."""
    return _LONE.sub(REPLACEMENT, text) if has_lone(text) else text


def mend(value: Any) -> int:
    """Replace, in place, every lone surrogate in `value` (a parsed result model, or JSON-like data) by U+FFFD; the
    number of strings mended. In place: the models and containers are the ones just parsed from the backend's
    message, held by no one else yet. A walk over every value: on the event loop only for a small `value`."""
    mended = 0
    stack: list[Any] = [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if type(item) is dict:  # first: parsed JSON is dicts and lists
            mended += _mend_mapping(item, push)
        elif isinstance(item, BaseModel):
            mended += _mend_mapping(item.__dict__, push)
            if item.__pydantic_extra__:
                mended += _mend_mapping(item.__pydantic_extra__, push)
        elif isinstance(item, dict):
            mended += _mend_mapping(item, push)
        elif isinstance(item, list):
            for index, element in enumerate(item):
                if type(element) is str:
                    if has_lone(element):
                        item[index] = _LONE.sub(REPLACEMENT, element)
                        mended += 1
                elif not _is_leaf(element):
                    push(element)
    return mended


def _mend_mapping(mapping: dict[Any, Any], push: Any) -> int:
    mended = 0
    for key, element in mapping.items():
        if type(element) is str:
            if has_lone(element):
                mapping[key] = _LONE.sub(REPLACEMENT, element)
                mended += 1
        elif not _is_leaf(element):
            push(element)
    bad_keys = [key for key in mapping if type(key) is str and has_lone(key)]
    for key in bad_keys:  # a property or `_meta` key: a mended key that clashes with another keeps the later value
        mapping[_LONE.sub(REPLACEMENT, key)] = mapping.pop(key)
    return mended + len(bad_keys)


def _is_leaf(value: Any) -> bool:
    return value is None or isinstance(value, int | float | bool | bytes | str)


def identity_problem(method: str, item: Any) -> str | None:
    """Why an item of a `method` list (a model or JSON data) cannot be served for a lone surrogate in what names it,
    or None."""
    for field in IDENTITY_FIELDS.get(method, ()):
        text = item.get(field) if isinstance(item, dict) else getattr(item, field, None)
        if isinstance(text, str) and has_lone(text):
            shown = field.replace("_t", "T")
            return f"its {shown} holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which no client can send back"
    return None


def mended_items(backend: str, method: str, items: list[Any]) -> list[Any]:
    """`items` with their lone surrogates replaced by U+FFFD, in place, and without those whose name or URI holds
    one, each dropped with a warning (`MAX_WARNINGS` a page). A walk over every value: on a worker thread."""
    kind = _KINDS.get(method, "prompt")
    kept: list[Any] = []
    mended = dropped = 0
    for item in items:
        problem = identity_problem(method, item)
        if problem is None:
            mended += mend(item)
            kept.append(item)
            continue
        dropped += 1
        if dropped <= MAX_WARNINGS:
            name = item.get("name", "?") if isinstance(item, dict) else getattr(item, "name", "?")
            logger.warning("backend %s: %s '%s' dropped: %s", backend, kind, escaped(shorten(str(name))), problem)
    if dropped > MAX_WARNINGS:
        more = dropped - MAX_WARNINGS
        logger.warning("backend %s: %d more %ss dropped for lone surrogates in their names", backend, more, kind)
    if mended:
        level = logging.DEBUG if (backend, method) in _MENDED_LISTS else logging.WARNING
        _MENDED_LISTS.add((backend, method))
        logger.log(
            level,
            "backend %s: %s: lone surrogates (unpaired \\ud800-\\udfff escapes) in %d of its strings: served with "
            "U+FFFD in their place",
            backend,
            method,
            mended,
        )
    return kept if dropped else items


def escaped(text: str) -> str:
    """`text` with lone surrogates shown as escapes: a log handler writing UTF-8 cannot write them."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_CANDIDATE = re.compile(rb"\\u[dD]")  # where a surrogate escape may start (its `\` may itself be escaped)
_HEX = frozenset(b"0123456789abcdefABCDEF")
_MENDED_ESCAPE = b"fffd"
_WINDOW = 12  # the bytes a candidate is judged by: a high half's escape and the low half's after it


class EscapeMender:
    """A JSON body's bytes as they come, each lone surrogate escape (`\\ud800`-`\\udfff` not part of a pair)
    rewritten to `\\ufffd`: the SDK's client parses an HTTP backend's body with pydantic, which refuses the whole
    message for one (-32700, "the body is not JSON-RPC"), so a listing or a result holding one never reached the
    mending of parsed messages. The escape and its replacement are six bytes each: nothing moves.

    Linear: the candidates (`\\ud`, `\\uD`) are found by `re` (no quantifier, no backtracking), and whether one's `\\`
    starts an escape is told by the parity of the backslashes before it, counted back only to where the last
    candidate ended. A chunk's last bytes that could start an escape not complete yet are held for the next, at most
    `_WINDOW - 1` of them and one backslash of a run (pairs of backslashes are sent on): a body of backslashes is
    not held, nor rescanned."""

    def __init__(self) -> None:
        self._held = b""  # bytes carried to the next chunk; they start where no escape is open
        self.mended = 0

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of `chunk` (after those held) that can be judged now, mended."""
        data = self._held + chunk if self._held else chunk
        if len(data) < _WINDOW:
            self._held = data
            return b""
        cut = _held_from(data, len(data) - _WINDOW + 1)
        out, cut = self._mended(data, cut)
        self._held = data[cut:]
        return out[:cut] if cut < len(out) else out

    def flush(self) -> bytes:
        """What is held, mended, at the body's end."""
        data, self._held = self._held, b""
        return self._mended(data, len(data))[0]

    def _mended(self, data: bytes, stop: int) -> tuple[bytes, int]:
        """`data` with the lone escapes starting before `stop` rewritten, and where the next scan must start (past
        `stop` when a pair's low half lies beyond it)."""
        buffer: bytearray | None = None
        clean = 0  # no escape is open here: the backslashes counted back stop at it
        found = _CANDIDATE.search(data, 0, stop + 2)
        while found is not None and found.start() < stop:
            at = found.start()
            run = data[clean:at]
            if (len(run) - len(run.rstrip(b"\\"))) % 2:  # this `\` is the second of an escaped backslash
                clean = at + 1
            else:
                clean, lone = _judged(data, at)
                if lone:
                    buffer = buffer if buffer is not None else bytearray(data)
                    buffer[at + 2 : at + 6] = _MENDED_ESCAPE
                    self.mended += 1
            found = _CANDIDATE.search(data, clean, stop + 2)
        return (bytes(buffer) if buffer is not None else data), max(stop, clean)


def _held_from(data: bytes, cut: int) -> int:
    """Where to cut `data` near `cut` so that what follows starts where no escape is open: back to the start of a
    run of backslashes ending there, then forward over its whole pairs (escaped backslashes)."""
    head = data[:cut]
    begin = cut - (len(head) - len(head.rstrip(b"\\")))
    return begin + (cut - begin) // 2 * 2


def _judged(data: bytes, at: int) -> tuple[int, bool]:
    """The end of the escape at `at` (`\\ud...`) and whether it is a lone surrogate."""
    digits = data[at + 2 : at + 6]
    if len(digits) < 4 or not _HEX.issuperset(digits):
        return at + 2, False  # not an escape JSON allows: the parser says so
    value = int(digits, 16)
    if value < 0xD800:
        return at + 6, False
    if value >= 0xDC00:
        return at + 6, True  # a low half with no high one before it (that would have taken it)
    low = data[at + 6 : at + 12]
    if len(low) == 6 and low[:2] == b"\\u" and _HEX.issuperset(low[2:]) and 0xDC00 <= int(low[2:], 16) <= 0xDFFF:
        return at + 12, False
    return at + 6, True
