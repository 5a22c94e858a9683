"""What an audit event keeps of a string a client chose (a tool name, clientInfo, a request id): its first
`MAX_FIELD_CHARS` characters and its length. Shared by the log's own events (audit.py) and a workflow run's
(run_audit.py)."""

from __future__ import annotations

import re
from typing import TypeVar

# Characters kept of a string a client chose (a tool name, clientInfo.name, …), as spans keep of a name.
MAX_FIELD_CHARS = 200
_Text = TypeVar("_Text", str, str | None)


def bounded(value: _Text) -> _Text:
    """`value` cut to `MAX_FIELD_CHARS`, marked with its full length: `abc…(100,007 chars)`. A value cut already
    (when it was queued) is left as it is, so the length it names stays the original's."""
    if value is None or len(value) <= MAX_FIELD_CHARS or _cut_already(value):
        return value
    return f"{value[:MAX_FIELD_CHARS]}…({len(value):,} chars)"


def _cut_already(value: str) -> bool:
    """Whether `value` is one `bounded` made: a client could send the mark itself, so it is taken only with a
    length of at most 19 digits (the value stays short) that passes the bound (it names a cut, not a lie)."""
    mark = _CUT_MARK.fullmatch(value, MAX_FIELD_CHARS)
    return mark is not None and int(mark.group(1).replace(",", "")) > MAX_FIELD_CHARS


_CUT_MARK = re.compile(r"…\(([\d,]{1,25}) chars\)")
