"""Values that look secret are replaced before request or response data leaves in an audit event.

Redaction is by key (`password`, `token`, …) and by pattern (bearer tokens, JWTs, our API keys) in free text.
A string holding a JSON object or array (`call_tool`'s `arguments` may come as one) is parsed, redacted the
same way and written back as JSON, when it is at most `MAX_PARSED_CHARS` long; a longer one has the values of
secret-looking keys blanked by pattern. A secret a tool returns under an innocent key, or in its text, is
written as it is: redaction cannot know it.
"""

from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[-_]?key|authori[sz]ation|cookie|credential|private", re.I)
# Bearer tokens, JWTs and our API keys inside free text.
_SECRET_TEXT = re.compile(r"(?i)bearer\s+\S+|eyJ[\w-]+\.[\w-]+\.[\w-]*|vmcp_[A-Za-z0-9_-]{16,}")
# `"password": "…"` or `"pin_token": 1234` inside JSON text too long to parse: the value after a secret key.
_SECRET_MEMBER = re.compile(
    r'("[^"\\]*(?:' + _SECRET_KEY.pattern + r')[^"\\]*"\s*:\s*)("(?:[^"\\]|\\.)*"|[^\s,}\]]+)', re.I
)
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
        return _SECRET_TEXT.sub(REDACTED, _SECRET_MEMBER.sub(rf'\g<1>"{REDACTED}"', text))
    try:
        parsed = json.loads(stripped)
    except ValueError:
        return _SECRET_TEXT.sub(REDACTED, _SECRET_MEMBER.sub(rf'\g<1>"{REDACTED}"', text))
    return json.dumps(redacted(parsed, depth + 1), ensure_ascii=False)
