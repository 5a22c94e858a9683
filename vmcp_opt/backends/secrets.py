"""Keep backend secrets (env and header values, credentials in URLs) out of every log line and error message.

Masking looks for each secret as written and in the escaped forms an error message may show it in: h11 prints
an illegal header value as `repr(bytes)` (`b'key\\n'`), a `%r` of a string escapes it too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from vmcp_opt.config import SECRET_NAME, BackendConfig

MASK = "***"
_MIN_SECRET_LENGTH = 4  # shorter values ("1", "on") would mask ordinary words

# URL query parameters whose values are credentials (`?token=`, `&api_key=`, a signed URL's `sig=`).
_SECRET_PARAMETER = re.compile(r"token|key|secret|passw|pwd|sig|auth|credential|session", re.I)


def secret_values(backend: BackendConfig) -> list[str]:
    """Values that must never be shown, longest first: every header value, env values under secret-looking
    keys, every value that came from a `${VAR}` reference, and the credentials written in the URL. Other env
    values (a timezone, a file path, a name) stay readable in logs."""
    env = [value for key, value in backend.env.items() if SECRET_NAME.search(key)]
    candidates = [*env, *backend.headers.values(), *backend.referenced_values(), *url_credentials(backend.url)]
    candidates += backend.auth.secret_values(Path.cwd())  # files: made absolute at load
    values = {v for v in candidates if len(v) >= _MIN_SECRET_LENGTH}
    # `Bearer <token>`: the token alone must not leak either.
    values |= {part for v in backend.headers.values() for part in v.split() if len(part) >= 8}
    return with_escaped_forms(values)


def escaped_forms(value: str) -> set[str]:
    """`value` as written and as error messages escape it: `repr` of its UTF-8 bytes (h11's "Illegal header
    value b'…'"), of the string, and its `unicode_escape`; the same for a value without anything to escape."""
    raw = value.encode("utf-8", "surrogatepass")
    return {
        value,
        repr(raw)[2:-1],
        repr(value)[1:-1],
        value.encode("unicode_escape").decode("ascii"),
    }


def with_escaped_forms(values: Iterable[str], min_length: int = _MIN_SECRET_LENGTH) -> list[str]:
    """Every form of every value (`escaped_forms`) at least `min_length` long, longest first, so that a longer
    secret is masked before a part of it."""
    forms = {form for value in values for form in escaped_forms(value) if len(form) >= max(1, min_length)}
    return sorted(forms, key=len, reverse=True)


def url_credentials(url: str | None) -> list[str]:
    """The user, password and secret-named query values written in `url`, as written and decoded."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return []
    found = [parts.username or "", parts.password or ""]
    found += [value for name, value in query if _SECRET_PARAMETER.search(name)]
    raw_query = [pair.partition("=") for pair in parts.query.split("&")]
    found += [value for name, _, value in raw_query if _SECRET_PARAMETER.search(unquote(name))]
    return sorted({form for value in found if value for form in (value, unquote(value), quote(value, safe=""))})


def mask_url(url: str) -> str:
    """`url` as it may be shown: `***@host`, and `***` for the values of secret-named query parameters."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{name}={MASK}" if sep and _SECRET_PARAMETER.search(unquote(name)) else f"{name}{sep}{value}"
        for name, sep, value in (pair.partition("=") for pair in parts.query.split("&"))
        if name or sep
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with each of `secrets` masked; give them as `secret_values` does (escaped forms included)."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    """A logging filter that masks the given values, in their escaped forms too, in every record that passes
    through it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = with_escaped_forms(secrets, min_length=1)  # as given: the caller chose them
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
