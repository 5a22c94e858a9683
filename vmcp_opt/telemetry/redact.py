"""Values that look secret are replaced before request or response data leaves in an audit event.

Redaction is by key (`password`, `token`, …) and by pattern (bearer tokens, JWTs, our API keys) in free text.
A string holding a JSON object or array (`call_tool`'s `arguments` may come as one) is parsed, redacted the
same way and written back as JSON, when it is at most `MAX_PARSED_CHARS` long. Any other string (a code-mode
script, a note, JSON too long to parse) has the values of its secret-looking members blanked where they are
written as JSON (`"password": "…"`), Python or Starlark (`'api_key': '…'`, `token="…"`), an assignment or a
header (`secret = …`, `Authorization: …`), also inside a quoted string of escaped JSON (`"{\\"token\\": …}"`).
A secret a tool returns under an innocent key, or in its prose, is written as it is: redaction cannot know it.

A client chooses this text (up to `server.max_body_bytes`), and `re` holds the GIL while it matches, so every
pattern runs in time linear in the text: possessive quantifiers (no backtracking into a run), a JWT only at the
start of a token, a member's key tested by a function rather than by the pattern, a bare key only at the start
of a word, and each place in the text tried as a member's start once. The JWT pattern that backtracked took
35 s over 150 kB of "eyJeyJeyJ…", and the whole gateway stood still for that long. Now a megabyte takes at most
~0.7 s of the writer thread (`a:a:a:…`, a member every two characters; 4 MB 2.6 s), prose ~0.15 s; one `re`
call holds the GIL only up to the next member (~0.15 s a megabyte without any: the token pattern's time before).
"""

from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[-_]?key|authori[sz]ation|cookie|credential|private", re.I)
# Bearer tokens, JWTs and our API keys inside free text. A token ends at a quote or a backslash: in
# `"Bearer a.b", "next": …` it is `a.b`, not the rest of the document.
_SECRET_TEXT = re.compile(
    r"""(?i)bearer\s++[^\s"'\\]++|(?<![\w-])eyJ[\w-]++\.[\w-]++\.[\w-]*+|vmcp_[A-Za-z0-9_-]{16,}+"""
)
# A member: a key, `:` or `=` (`:=`, `==`), and its value. The key is a JSON string (whose opening quote is not
# escaped), a Python one, an escaped JSON string (`\"key\"`, inside a quoted string) or a word; the value any
# of those strings or a bare run (`1234`, `hunter2`, `abc.def`) up to a `:` or `=` (a secret's is blanked on
# to the end of its run, `_BARE_RUN`). An object or array value is not a match: the search goes on inside it, to
# the members it holds. Strings stop at a line's end: a stray apostrophe in a script's comment is not paired
# with one lines below. Each key begins with the character it starts at, its look behind after it (`"(?<!\\")`:
# the quote is not escaped; `[\w.-](?<![\w.-]{2})`: a word starts here): `re` then skips at once the places
# no key can start (a third of the time over prose).
_MEMBER = re.compile(
    r"""(?P<key>"(?<!\\")(?:[^"\\\n]|\\.)*+"|'(?<!\\')(?:[^'\\\n]|\\.)*+'|\\"[^"\\\n]*+\\"|[\w.-](?<![\w.-]{2})[\w.-]*+)"""
    r"""\s*+[:=]=?\s*+"""
    r"""(?P<value>"(?:[^"\\\n]|\\.)*+"|'(?:[^'\\\n]|\\.)*+'|\\"(?:[^"\\\n]|\\[^"\n])*+\\"|[^\s"'\\,;&(){}\[\]<>:=]++)"""
)
_BARE_RUN = re.compile(r"""[^\s"'\\,;&(){}\[\]<>]*+""")  # a secret's bare value: `user:pass`, `abc==`
# Longer JSON strings are not parsed: the writer thread shares the GIL with requests.
MAX_PARSED_CHARS = 65_536


def redacted(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return REDACTED
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else redacted(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v, depth + 1) for v in value]
    if isinstance(value, str):
        return _redacted_text(value, depth)
    return value


def _redacted_text(text: str, depth: int) -> str:
    stripped = text.strip()
    if (stripped[:1], stripped[-1:]) in (("{", "}"), ("[", "]")) and len(stripped) <= MAX_PARSED_CHARS:
        try:
            parsed = json.loads(stripped)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes: free text
            pass
        else:
            return json.dumps(redacted(parsed, depth + 1), ensure_ascii=False)
    # Tokens first: `Authorization: Bearer x` is then `Authorization: [REDACTED]`, not a blanked `Bearer` and x.
    return _blanked_members(_SECRET_TEXT.sub(REDACTED, text))


def _blanked_members(text: str) -> str:
    """`text` with the value of each member whose key looks secret blanked. After a member whose key does not,
    the search goes on inside its value (`s = "{\\"password\\": …}"`, `url: https://x/?token=…`). Each place is
    tried as a member's start once (the search only moves forward), and two bare values never overlap (each
    stops at the `:` or `=` before the next): linear."""
    parts: list[str] = []
    done = position = 0
    while (member := _MEMBER.search(text, position)) is not None:
        key, value, start = member.group("key"), member.group("value"), member.start("value")
        quoted = value[0] in "\"'\\"
        if _SECRET_KEY.search(key):
            end = member.end() if quoted else start + len(_blanked_run(text, start))
            parts += [text[done:start], _blank(key, value)]
            done = position = end
        elif quoted:  # past the opening quote (`"`, `'`, `\"`): the string's text is searched
            position = start + (2 if value[0] == "\\" else 1)
        else:
            position = start
    parts.append(text[done:])
    return "".join(parts)


def _blanked_run(text: str, start: int) -> str:
    run = _BARE_RUN.match(text, start)
    assert run is not None  # `*+` matches the empty run
    return run.group()


def _blank(key: str, value: str) -> str:
    """`[REDACTED]` quoted as `value` was; a bare value of a JSON member quoted as a JSON string."""
    quote = '\\"' if value.startswith('\\"') else value[0] if value[0] in "\"'" else ""
    if not quote and key.startswith(('"', '\\"')):
        quote = '\\"' if key.startswith('\\"') else '"'
    return f"{quote}{REDACTED}{quote}"
