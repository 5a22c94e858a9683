"""The regular-expression engines of argument checks (vmcp_opt/arguments.py): RE2 (linear time, no
backtracking) when it takes the pattern, otherwise `regex`, run with the check's time left as its timeout.

Imported by arguments.py at the first pattern a check meets, not with it: a catalogue whose schemas have no
`pattern` or `patternProperties` (the bundled demo) never loads re2 and regex (3.2 MiB of the gateway).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2
import regex


class Backtracking:
    """A pattern RE2 does not take (lookaround, backreferences): run by `regex`, with a timeout."""

    def __init__(self, pattern: Any) -> None:
        self.pattern = pattern


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a backend's odd pattern must not write to our stderr
# A check needs only match or no match: tracking submatches costs O(groups) per byte, so a pattern with
# thousands of groups would make one search (a single C call the deadline cannot stop) take seconds.
_RE2_OPTIONS.never_capture = True


@lru_cache(maxsize=2048)
def compile_pattern(pattern: str) -> Any:
    """RE2's compiled pattern, else a `Backtracking` one, else None (neither engine takes it)."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error:
        pass
    try:
        return Backtracking(regex.compile(pattern))
    except (regex.error, ValueError, OverflowError, RecursionError):
        return None
