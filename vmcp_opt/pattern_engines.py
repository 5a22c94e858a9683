"""The regular-expression engines of argument checks (vmcp_opt/arguments.py): RE2 (linear time, no
backtracking) when it takes the pattern, otherwise `regex`, run with the check's time left as its timeout.

Imported by arguments.py at the first pattern a check meets, not with it: a catalogue whose schemas have no
`pattern` or `patternProperties` (the bundled demo) never loads re2 and regex (3.2 MiB of the gateway).

Neither compile can be stopped, and both hold the GIL throughout: each engine copies a counted repeat's body
(`x{1000}`) once per count, so nested counts multiply. `(?:(?:(?:a{1000}){1000}){1000})`, 31 characters from a
backend's schema, had `regex` build a billion steps: the whole gateway frozen until the kernel killed it for its
memory. `unrolled_sizes` estimates what each engine would build, in one pass over the pattern, and a pattern
over an engine's budget is not given to it; one over both is left to the backend to enforce, as one that
neither engine takes.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

import re2
import regex

from vmcp_opt.display import printable, shorten

logger = logging.getLogger(__name__)

# Steps a compile may build (about 0.4 µs each with either engine, more for lookarounds in `regex`): some 25 ms
# of the GIL at most for RE2 (a pattern of 10,000 nested groups is 20,000 steps, and was checked before this
# budget), some 7 ms for `regex` (`[0-9a-f]{2100}`, past RE2's counts, compiles in about a millisecond). RE2 unrolls `x{m,n}` n times (`x{m,}` m times) and takes only repeats up to
# 1,000; `regex` unrolls m times and takes any count, so the patterns it gets (lookarounds, backreferences,
# counts over 1,000) are held to less.
RE2_BUDGET = 65_536
REGEX_BUDGET = 16_384


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
    """RE2's compiled pattern, else a `Backtracking` one, else None (neither engine takes it, or it would
    unroll past both budgets)."""
    least, most = unrolled_sizes(pattern)
    if most <= RE2_BUDGET:
        try:
            return re2.compile(pattern, _RE2_OPTIONS)
        except re2.error:
            pass
    if least > REGEX_BUDGET:
        logger.warning(
            "a tool schema's pattern %s would compile to over %s steps; left to the backend to enforce",
            printable(shorten(pattern, 200)),
            f"{REGEX_BUDGET:,}",
        )
        return None
    try:
        return Backtracking(regex.compile(pattern))
    except (regex.error, ValueError, OverflowError, RecursionError):
        return None


# `{m}`, `{m,}`, `{m,n}` or `{,n}` after an atom.
_COUNT = re.compile(r"\{([0-9]*+)(,?+)([0-9]*+)\}")  # possessive: a long run of digits is read once
_HUGE = 10**9  # a count of more than 9 digits: past any budget (and past what `int` reads of a long one)
# The flags of a `(?flags)` or `(?flags:...)` group.
_FLAGS = re.compile(r"[A-Za-z0-9^-]*+")


class _Unfollowed(Exception):
    """The pattern turns on syntax the estimate does not follow: verbose mode (`x`, whose `#` comments may hold
    an unmatched `[` or `)`), nested sets (`V1`), or a comment holding a backslash."""


def unrolled_sizes(pattern: str) -> tuple[int, int]:
    """About how many steps `regex` (repeats unrolled their least count of times) and RE2 (their most) would
    compile `pattern` to: each character one step, times the counts of the repeats around it. Never less than
    the truth where it follows the syntax; where it does not, every count is taken to enclose the whole
    pattern."""
    if len(pattern) > RE2_BUDGET:  # past both budgets whatever it holds: not read (the reading is Python)
        return len(pattern), len(pattern)
    try:
        return _nested_sizes(pattern)
    except _Unfollowed:
        counts = [_counts(found) for found in _COUNT.finditer(pattern)]
        least = most = len(pattern)
        for low, high in counts:
            least, most = min(least * low, REGEX_BUDGET + 1), min(most * high, RE2_BUDGET + 1)
        return least, most


def _counts(found: re.Match[str]) -> tuple[int, int]:
    """The least and most counts of a `{...}` repeat, each at least 1 (the body is built once even for 0)."""
    low, high = (_HUGE if len(digits) > 9 else int(digits or 0) for digits in (found.group(1), found.group(3)))
    return max(low, 1), max(high if found.group(3) else low, low, 1)


def _nested_sizes(pattern: str) -> tuple[int, int]:
    # One frame per open group: [least, most] of its content so far, and of its last atom (what a count repeats).
    frames: list[list[int]] = [[0, 0, 0, 0]]
    at = 0
    while at < len(pattern):
        char = pattern[at]
        frame = frames[-1]
        if char == "(" and pattern.startswith("(?#", at):
            end = pattern.find(")", at)
            if end < 0 or "\\" in pattern[at:end]:
                raise _Unfollowed
            at = end + 1
            continue
        if char == "(":
            if pattern.startswith("(?", at):
                flags = _FLAGS.match(pattern, at + 2)
                if flags and ("x" in flags.group() or "V1" in flags.group()):
                    raise _Unfollowed
            frames.append([1, 1, 0, 0])
            at += 1
            continue
        if char == ")" and len(frames) > 1:
            inner = frames.pop()
            frame = frames[-1]
            frame[0], frame[1], frame[2], frame[3] = frame[0] + inner[0], frame[1] + inner[1], inner[0], inner[1]
            at += 1
            continue
        found = _COUNT.match(pattern, at) if char == "{" else None
        if found is not None:
            low, high = _counts(found)
            # Held at _HUGE: past both budgets anyway, and nested counts would otherwise grow numbers of millions
            # of digits.
            frame[0] = min(frame[0] + frame[2] * (low - 1), _HUGE)
            frame[1] = min(frame[1] + frame[3] * (high - 1), _HUGE)
            frame[2], frame[3] = min(frame[2] * low, _HUGE), min(frame[3] * high, _HUGE)
            at = found.end()
        elif char in "*+?":  # a repeat `regex` and RE2 do not unroll (or its lazy, possessive mark)
            at += 1
        else:
            at = _atom_end(pattern, at)
            frame[0], frame[1], frame[2], frame[3] = frame[0] + 1, frame[1] + 1, 1, 1
            if char == "|":
                frame[2] = frame[3] = 0
        if frame[0] > REGEX_BUDGET and frame[1] > RE2_BUDGET:
            break  # over both: no need to read on
    least = sum(frame[0] for frame in frames)
    most = sum(frame[1] for frame in frames)
    return least, most


def _atom_end(pattern: str, at: int) -> int:
    """Where the atom at `at` ends: an escape is two characters, a set runs to its first unescaped `]` (one
    right after `[` or `[^` is a member), anything else is one character."""
    if pattern[at] == "\\":
        return at + 2
    if pattern[at] != "[":
        return at + 1
    at += 1
    if pattern.startswith("^", at):
        at += 1
    if pattern.startswith("]", at):
        at += 1
    while at < len(pattern) and pattern[at] != "]":
        if pattern[at] == "[":
            # `[[:alpha:])]` is one set to both engines, but its first `]` is the class's: read as the set's end,
            # the `)` after it closed a group that was never open, and nested counts went uncounted.
            raise _Unfollowed
        at += 2 if pattern[at] == "\\" else 1
    return at + 1
