"""Keep backend secrets (env and header values) out of every log line and error message."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from vmcp_opt.config import BackendConfig

MASK = "***"
_MIN_SECRET_LENGTH = 4  # shorter values ("1", "on") would mask ordinary words


# Env keys whose values are secrets whatever they look like.
_SECRET_KEY = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|AUTH|COOKIE|SESSION", re.I
)


def secret_values(backend: BackendConfig) -> list[str]:
    """Values that must never be shown, longest first: every header value, env values under secret-looking
    keys, and every value that came from a `${VAR}` reference. Other env values (a timezone, a file path,
    a name) stay readable in logs."""
    env = [value for key, value in backend.env.items() if _SECRET_KEY.search(key)]
    candidates = [*env, *backend.headers.values(), *backend.referenced_values()]
    values = {v for v in candidates if len(v) >= _MIN_SECRET_LENGTH}
    # `Bearer <token>`: the token alone must not leak either.
    values |= {part for v in backend.headers.values() for part in v.split() if len(part) >= 8}
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    """A logging filter that masks the given values in every record that passes through it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted(set(secrets), key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in self.secrets)) if self.secrets else None

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        message = record.getMessage()
        if self._pattern.search(message):
            record.msg = self._pattern.sub(MASK, message)
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1])
            if self._pattern.search(text):
                # Tracebacks would print the secret; keep the masked message only.
                record.msg = f"{record.msg} ({type(record.exc_info[1]).__name__}: {self._pattern.sub(MASK, text)})"
                record.exc_info = None
                record.exc_text = None
        return True
