"""Untrusted text (a backend's tool name, a client's argument, a backend's stderr) made safe to show.

Messages and log lines that quote such text stay bounded (`shorten`) and cannot move the cursor, rewrite
a terminal or forge a log line (`printable`). A leaf: imports nothing of ours.
"""

from __future__ import annotations

import re

# C0 and C1 controls, the line and paragraph separators, and the bidirectional marks, embeddings, overrides
# and isolates, which reorder what a terminal shows ("Trojan Source"): a name could display as another.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Control characters (newlines, ANSI escapes, NUL, bidirectional overrides) written as `\\x1b`-style
    escapes."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def shorten(text: str, limit: int = 80) -> str:
    """At most about `limit` printable characters; a cut says how long the whole was."""
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text):,} characters)"
    return printable(text)
