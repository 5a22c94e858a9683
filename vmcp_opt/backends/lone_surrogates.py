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
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import BaseModel

from vmcp_opt.display import shorten

logger = logging.getLogger(__name__)

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
        if isinstance(item, BaseModel):
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
