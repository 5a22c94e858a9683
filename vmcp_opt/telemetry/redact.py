"""Values that look secret are replaced before request or response data leaves in an audit event."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[-_]?key|authori[sz]ation|cookie|credential|private", re.I)
# Bearer tokens, JWTs and our API keys inside free text.
_SECRET_TEXT = re.compile(r"(?i)bearer\s+\S+|eyJ[\w-]+\.[\w-]+\.[\w-]*|vmcp_[A-Za-z0-9_-]{16,}")


def redacted(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return REDACTED
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else redacted(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v, depth + 1) for v in value]
    if isinstance(value, str):
        return _SECRET_TEXT.sub(REDACTED, value)
    return value
