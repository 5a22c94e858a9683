"""Values that look secret are replaced before request or response data leaves in an audit event.

Redaction is by key (`password`, `token`, …) and by pattern (bearer tokens, JWTs, our API keys) in free text.
A string holding a JSON object or array (`call_tool`'s `arguments` may come as one) is parsed, redacted the
same way and written back as JSON, when it is at most `MAX_PARSED_CHARS` long; a longer one has the values of
secret-looking keys blanked by pattern. A secret a tool returns under an innocent key, or in its text, is
written as it is: redaction cannot know it.

A client chooses this text (up to `server.max_body_bytes`), and `re` holds the GIL while it matches, so every
pattern runs in time linear in the text: possessive quantifiers (no backtracking into a run), a JWT only at the
start of a token, a member's key tested by a function rather than by the pattern. The JWT pattern that
backtracked took 35 s over 150 kB of "eyJeyJeyJ…", and the whole gateway stood still for that long.
"""

from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[-_]?key|authori[sz]ation|cookie|credential|private", re.I)
# Bearer tokens, JWTs and our API keys inside free text.
_SECRET_TEXT = re.compile(r"(?i)bearer\s++\S++|(?<![\w-])eyJ[\w-]++\.[\w-]++\.[\w-]*+|vmcp_[A-Za-z0-9_-]{16,}+")
# A member of JSON text too long to parse: a key (a string whose opening quote is not escaped), the colon and
# the value; `_blank_member` blanks the value when the key looks secret (`"password": "…"`, `"pin_token": 1234`).
# An object or array value is not a match: the search goes on inside it, to the members it holds.
_MEMBER = re.compile(r'((?<!\\)"(?:[^"\\]|\\.)*+"\s*+:\s*+)("(?:[^"\\]|\\.)*+"|[^\s,{}\[\]"]++)')
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
    if (stripped[:1], stripped[-1:]) not in (("{", "}"), ("[", "]")):
        return _SECRET_TEXT.sub(REDACTED, text)
    if len(stripped) > MAX_PARSED_CHARS:
        return _SECRET_TEXT.sub(REDACTED, _MEMBER.sub(_blank_member, text))
    try:
        parsed = json.loads(stripped)
    except ValueError:
        return _SECRET_TEXT.sub(REDACTED, _MEMBER.sub(_blank_member, text))
    return json.dumps(redacted(parsed, depth + 1), ensure_ascii=False)


def _blank_member(member: re.Match[str]) -> str:
    key = member.group(1)
    return f'{key}"{REDACTED}"' if _SECRET_KEY.search(key) else member.group(0)
