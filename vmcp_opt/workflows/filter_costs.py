"""What a Jinja filter call may cost, known from its input before it runs (templates.py charges it).

A filter runs to its end once called: its loop is library code, which the render's trace does not see, so
the clocks are looked at only before it (`urlize` on 3 MB computed 14 s past a 5 s cap, holding its run's
render slot past the run's timeout). So each filter whose work is more than a pass over its input, or whose
output or memory can be many times its input, has a cost function here: its worst case, in the work budget's
units, from its input's size and arguments. `MAX_WORK` units stand for `MAX_RENDER_SECONDS` of CPU, one
unit for `NS_PER_UNIT`; the multipliers are the worst input shape measured for each filter (CPython 3.11,
Jinja 3.1: `urlize` on "a\\n" repeated, 3.3 µs a character; `wordwrap` on spaces, whose long-word break
slices what is left of the word for every line: quadratic), rounded up. Memory counts too: a list made costs
`_LIST_UNITS` on top of its items (`batch(1)` on 3.9 MB made 3.9M lists, +389 MB).

A call is refused (`SecurityError` naming the filter) when its cost is past what the render has left, or
past `MAX_CALL_UNITS`, the most one uninterrupted call may take (~0.5 s of CPU): a render told to stop (its
run's deadline, its cancellation) stops within one such call, so its slot is free soon after.
Filters not here cost what they are given, as before (`upper`, `escape`, `tojson` run in C, ~1-10 ns a
character). Jinja's lazy filters (`map`, `select`, `unique`, `batch`, …) are charged here for the items they
will make, as their items are made later, out of sight.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from jinja2.exceptions import SecurityError

NS_PER_UNIT = 250  # MAX_WORK (20M units) x 250 ns = MAX_RENDER_SECONDS (5 s)
MAX_CALL_UNITS = 2_000_000  # one filter call: ~0.5 s of CPU at most, the delay of a stop
_LIST_UNITS = 16  # a list made (its header, ~88 bytes), in units of a character's 4 bytes
_STRING_UNITS = 12  # a string made for one item (a `list` of non-Latin-1 text: ~50 bytes each)
_SORT_UNITS = 12  # an item sorted, its key read through the sandbox (3 µs measured, n log n)
_ITEM_UNITS = 10  # an item a lazy filter tests or maps through the sandbox (selectattr: 2.6 µs measured)
_DEEP_WALK_CAP = MAX_CALL_UNITS + 1  # a deep size is counted no further than it can matter

Cost = Callable[[list[Any], Mapping[str, Any]], int]


def _argument(values: list[Any], kwargs: Mapping[str, Any], position: int, name: str, default: Any) -> Any:
    """A filter's argument: by name, else at `position` of `values` (0 is the filtered value)."""
    if name in kwargs:
        return kwargs[name]
    return values[position] if len(values) > position else default


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict | set | frozenset) else 1


def deep_size(value: Any, cap: int = _DEEP_WALK_CAP) -> int:
    """Characters and items of `value` and everything in it, counted up to `cap` (the walk stops there)."""
    total, pending = 0, [value]
    while pending and total < cap:
        item = pending.pop()
        if isinstance(item, str | bytes):
            total += len(item) + 1
        elif isinstance(item, dict):
            total += len(item) + 1
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += len(item) + 1
            pending.extend(item)
        else:
            total += 1
    return total


def _text_length(value: Any) -> int:
    return len(value) if isinstance(value, str) else deep_size(value)


def _per_character(units: int) -> Cost:
    return lambda values, kwargs: units * _text_length(values[0]) if values else 0


def _per_item(units: int) -> Cost:
    return lambda values, kwargs: units * _length(values[0]) if values else 0


def _urlize(values: list[Any], kwargs: Mapping[str, Any]) -> int:
    """3.3 µs a character at worst ("a\\n" repeated: 14 units), and every word may become a link carrying
    `target`, `rel` and the URL twice."""
    text = _text_length(values[0]) if values else 0
    added = sum(
        _length(_argument(values, kwargs, position, name, ""))
        for position, name in ((3, "target"), (4, "rel"), (5, "extra_schemes"))
    )
    return 14 * text + (text // 2 + 1) * (added + 40)


_WORD = re.compile(r"\S+|[^\S\n]+")  # what textwrap may have to break: a word, or a run of blanks
_COPIES_PER_UNIT = NS_PER_UNIT * 4  # a character copied: ~0.25 ns


def _wordwrap(values: list[Any], kwargs: Mapping[str, Any]) -> int:
    """1.8 µs a character at worst (many short lines: 8 units); a long word broken into lines of `width` is
    sliced again for each line (textwrap), quadratic: its length² / width character copies (0.25 ns each)."""
    text = values[0] if values and isinstance(values[0], str) else ""
    width = _argument(values, kwargs, 1, "width", 79)
    width = width if isinstance(width, int) and width > 0 else 1
    size = len(text) + 7 * text.count("\t")  # tabs are expanded to 8 spaces first
    wrapstring = _argument(values, kwargs, 3, "wrapstring", None)
    lines = size // width + text.count("\n") + 1
    cost = 8 * size + lines * (_length(wrapstring) if isinstance(wrapstring, str) else 1)
    if cost <= MAX_CALL_UNITS and _argument(values, kwargs, 2, "break_long_words", True):
        cost += _long_words(text, size, width)  # measured only when it can matter: it costs a pass too
    return cost


def _long_words(text: str, size: int, width: int) -> int:
    """The copies breaking long words makes, in units: the whole text as one word first (cheap to know), the
    longest word measured only when that is too much."""
    units = size * size // width // _COPIES_PER_UNIT
    if units <= MAX_CALL_UNITS // 2:
        return units
    longest = max((len(match) for match in _WORD.findall(text)), default=0) * (8 if "\t" in text else 1)
    return size * longest // width // _COPIES_PER_UNIT


def _indent(values: list[Any], kwargs: Mapping[str, Any]) -> int:
    """Each line gets `width` (spaces, or the text given)."""
    text = values[0] if values and isinstance(values[0], str) else ""
    width = _argument(values, kwargs, 1, "width", 4)
    prefix = width if isinstance(width, int) else _length(width)
    return len(text) + (text.count("\n") + 1) * max(prefix, 0)


def _center(values: list[Any], kwargs: Mapping[str, Any]) -> int:
    width = _argument(values, kwargs, 1, "width", 80)
    return max(_length(values[0]) if values else 0, width if isinstance(width, int) else 0)


def _batch(values: list[Any], kwargs: Mapping[str, Any]) -> int:
    """`len / linecount` lists of `linecount` items (the last one filled)."""
    items = _length(values[0]) if values else 0
    size = _argument(values, kwargs, 1, "linecount", 1)
    size = size if isinstance(size, int) and size > 0 else 1
    return items + size + (items // size + 1) * _LIST_UNITS


def _slice(values: list[Any], kwargs: Mapping[str, Any]) -> int:
    """`slices` lists holding the items between them (plus one filler each)."""
    items = _length(values[0]) if values else 0
    slices = _argument(values, kwargs, 1, "slices", 1)
    slices = slices if isinstance(slices, int) and slices > 0 else 1
    return items + slices * (_LIST_UNITS + 1)


def _made_items(values: list[Any], kwargs: Mapping[str, Any]) -> int:
    """A list of the value's items: of a text, one string per character."""
    value = values[0] if values else None
    if isinstance(value, str):
        return len(value) * _STRING_UNITS
    return _length(value) * 2


def _fromjson(values: list[Any], kwargs: Mapping[str, Any]) -> int:
    """JSON parsed: its text, and a list or dict made for each bracket (`[{},{},…]`: 64 bytes each from 3)."""
    text = values[0] if values else None
    if not isinstance(text, str | bytes):
        return 1
    brackets = text.count("[") + text.count("{") if isinstance(text, str) else text.count(b"[") + text.count(b"{")
    commas = text.count(",") if isinstance(text, str) else text.count(b",")
    return len(text) + brackets * _LIST_UNITS + commas * 2


def _serialized(units: int) -> Cost:
    """A value written out whole (`pprint`, `string` of a list, `xmlattr`): its deep size, `units` each."""
    return lambda values, kwargs: units * deep_size(values[0]) if values else 0


def _written_out(values: list[Any], kwargs: Mapping[str, Any]) -> int:
    """`string`: nothing for a text (it is kept), a structure's deep size for the text written of it."""
    return 0 if not values or isinstance(values[0], str) else deep_size(values[0])


def _tojson(values: list[Any], kwargs: Mapping[str, Any]) -> int:
    """JSON written runs in C (~10 ns a character: what it is given pays), but with `indent` each item is on
    a line of `indent x depth` spaces: a thousand items at depth 900 with an indent of 1,000 are 900M
    characters. Those spaces are its cost."""
    indent = _argument(values, kwargs, 1, "indent", None)
    if not values or not isinstance(indent, int) or indent <= 0:
        return 0
    return _indentation(values[0], indent)


def _indentation(value: Any, indent: int) -> int:
    """The spaces `json.dumps(value, indent=indent)` writes, counted no further than `_DEEP_WALK_CAP`."""
    total, pending = 0, [(value, 0)]
    while pending and total < _DEEP_WALK_CAP:
        item, depth = pending.pop()
        total += 1 + depth * indent
        if isinstance(item, dict):
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            pending.extend((child, depth + 1) for child in item)
    return total


# --- sizes of calls templates.py checks (`%` forms, `join`, `replace`) ---


# What follows a `%` and its mapping key, if any: flags, width, precision (`%(key)-10.3s`).
_PERCENT_FIELD = re.compile(r"[#0\- +]*+(\*|\d+)?(?:\.(\*|\d+))?")


def percent_fields(form: str) -> Iterator[tuple[str, str]]:
    """(width, precision) of each `%` field of `form`, as Python's `%` reads them: a mapping key runs to its
    matching `)`, parentheses nested (`%(a(b)c)9s` has width 9; the pattern this replaces stopped the key at the
    first `)` and missed it). Each character is read once (that pattern read to the end again from each `%(` of
    a form with no `)`)."""
    at = form.find("%")
    while at >= 0:
        if form.startswith("%", at + 1):  # `%%` is a literal percent, not a field: its second `%` starts none
            at = form.find("%", at + 2)
            continue
        after_key = _key_end(form, at + 1)
        found = _PERCENT_FIELD.match(form, after_key) if after_key is not None else None
        if found is None:
            return  # an unclosed key: `%` refuses the form
        yield found.group(1) or "", found.group(2) or ""
        at = form.find("%", found.end())


def _key_end(form: str, at: int) -> int | None:
    """Where the `(key)` at `at` ends (`at` when there is none), or None when it is never closed."""
    if not form.startswith("(", at):
        return at
    depth = 0
    for position in range(at, len(form)):
        if form[position] == "(":
            depth += 1
        elif form[position] == ")":
            depth -= 1
            if depth == 0:
                return position + 1
    return None


def joined_size(separator: str, items: Any) -> int:
    if not isinstance(items, list | tuple | str):
        return 1  # an iterator: its items are counted where they were made
    return sum(_length(item) for item in items) + len(separator) * len(items)


def replaced_size(source: str, old: Any, new: Any) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(source)
    matches = len(source) + 1 if old == "" else source.count(old)
    return len(source) + matches * len(new)


# The costly filters (Jinja's, the sandbox's and ours), by name; `dictsort` and `groupby` sort too.
FILTER_COSTS: dict[str, Cost] = {
    "urlize": _urlize,
    "wordwrap": _wordwrap,
    "indent": _indent,
    "center": _center,
    "batch": _batch,
    "slice": _slice,
    "title": _per_character(2),  # a regex and a call per word: 0.3 µs a character
    "striptags": _per_character(1),
    "pprint": _serialized(2),  # 0.27 µs a character
    "string": _written_out,
    "xmlattr": _serialized(2),
    "tojson": _tojson,
    "fromjson": _fromjson,
    "list": _made_items,
    "sort": _per_item(_SORT_UNITS),
    "dictsort": _per_item(_SORT_UNITS),
    "groupby": _per_item(_SORT_UNITS + _LIST_UNITS),
    "unique": _per_item(_ITEM_UNITS),
    "min": _per_item(2),  # 0.3 µs an item
    "max": _per_item(2),
    "map": _per_item(_ITEM_UNITS),
    "select": _per_item(_ITEM_UNITS),
    "reject": _per_item(_ITEM_UNITS),
    "selectattr": _per_item(_ITEM_UNITS),
    "rejectattr": _per_item(_ITEM_UNITS),
}


def charge_filter(name: str, values: list[Any], kwargs: Mapping[str, Any], left: int) -> int:
    """The cost of calling filter `name` with `values` (the filtered value first), or `SecurityError` naming
    it when that is past `left` (what the render has left) or `MAX_CALL_UNITS`."""
    cost = FILTER_COSTS.get(name)
    if cost is None:
        return 0
    units = cost(values, kwargs)
    if units > min(left, MAX_CALL_UNITS):
        allowed = "the most one filter call may do" if left >= MAX_CALL_UNITS else "what the template has left"
        raise SecurityError(
            f"filter '{name}' on this input could cost {units:,} units of work, past {allowed} "
            f"({min(left, MAX_CALL_UNITS):,}): give it a smaller input"
        )
    return units
