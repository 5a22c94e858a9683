"""Keep backend secrets (env and header values, credentials in URLs) out of every log line and error message.

Masking looks for each secret as written and in the escaped forms an error message may show it in: h11 prints
an illegal header value as `repr(bytes)` (`b'key\\n'`), a `%r` of a string escapes it too.

Some secrets are known only at run time: a token the gateway fetched, a secret file's new content after a
rotation. The credentials note each as it arrives (`LearntSecrets`); the log filter and a connection's masking
pick them up then, by a version number, rather than rebuilding anything per line or per call.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from vmcp_opt.config import BackendConfig
from vmcp_opt.config.base import MASK, SECRET_PARAMETER
from vmcp_opt.config.base import mask_url as mask_url  # its home before config/base.py

# Which env keys and argv items hold secrets: config/references.py decides (its warnings must hide what masking
# hides, and the config package imports nothing else of vmcp_opt).
from vmcp_opt.config.references import is_secret_env, option_values
from vmcp_opt.logs import masked_userinfo

_MIN_SECRET_LENGTH = 4  # shorter values ("1", "on") would mask ordinary words
_MIN_TOKEN_PART = 8  # a word of a header value masked alone (`Bearer <token>`'s token, not `Bearer`)


def secret_values(backend: BackendConfig) -> list[str]:
    """Values that must never be shown, longest first: every header value, env values under secret-looking
    keys (`is_secret_env`), the values of secret-named options in its args (`--token=…`, `--password …`), every
    value a `${VAR}` reference took from the environment, a `${VAR:-default}`'s default where the variable's name
    or the place is a secret's (config/references.py), and the credentials written in the URL. Other env values (a
    timezone, a file path, `PWD`, a name) stay readable in logs."""
    env = [value for key, value in backend.env.items() if is_secret_env(key)]
    candidates = [*env, *backend.headers.values(), *backend.referenced_values(), *url_credentials(backend.url)]
    candidates += option_values(backend.args)
    # A DSN in an arg or under any env key (`DATABASE_URL`): its password, as the process may print it.
    candidates += [found for text in [*backend.args, *backend.env.values()] for found in embedded_url_credentials(text)]
    candidates += backend.auth.secret_values(Path.cwd())  # files: made absolute at load
    values = {v for v in candidates if len(v) >= _MIN_SECRET_LENGTH}
    # `Bearer <token>`: the token alone must not leak either.
    values |= {part for v in backend.headers.values() for part in v.split() if len(part) >= _MIN_TOKEN_PART}
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
    found += [value for name, value in query if SECRET_PARAMETER.search(name)]
    raw_query = [pair.partition("=") for pair in parts.query.split("&")]
    found += [value for name, _, value in raw_query if SECRET_PARAMETER.search(unquote(name))]
    return sorted({form for value in found if value for form in (value, unquote(value), quote(value, safe=""))})


# A URL anywhere in a text (an arg, a line of prose): a scheme, `://`, then up to a space or a quote.
_EMBEDDED_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")
# A user name alone before the host (`https://<token>@host`) counts as a secret from this length on: a token
# is long, while a short one is a plain name (`postgres`, `git`) that masking everywhere would garble.
_TOKEN_AS_USER = 16


def embedded_url_credentials(text: str) -> list[str]:
    """The passwords and secret-named query values of the URLs written anywhere in `text`, and a user name with
    no password when it is as long as a token; as written and decoded."""
    found: list[str] = []
    for match in _EMBEDDED_URL.finditer(text):
        url = match.group()
        try:
            parts = urlsplit(url)
            user, password = parts.username, parts.password
        except ValueError:
            continue
        plain_name = user if user and (password or len(user) < _TOKEN_AS_USER) else None
        names = {plain_name, unquote(plain_name), quote(plain_name, safe="")} if plain_name else set()
        found += [value for value in url_credentials(url) if value not in names]
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with each of `secrets` masked; give them as `secret_values` does (escaped forms included)."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def masked_data(data: Any, secrets: Iterable[str]) -> Any:
    """A JSON value (a JSON-RPC error's `data`) with `secrets` and any URL's `user:password@` masked in its
    strings: `data` itself when nothing was, `MASK` when the masked text is no JSON any more."""
    if data is None:
        return None
    try:
        text = json.dumps(data, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return MASK
    masked = masked_userinfo(redact(text, secrets))
    if masked == text:
        return data
    try:
        return json.loads(masked)
    except (ValueError, RecursionError):
        return MASK


class LearntSecrets:
    """Secret values learnt at run time (a fetched token, a rotated secret file's content), the `most` latest
    kept: an older one has expired or been replaced. `version` changes with each new value, so that a reader
    rebuilds what it derives from them then, not on every use. `parent` learns each value too (the log filter's
    `LEARNT` gathers every backend's). Thread-safe: log records are filtered on any thread."""

    def __init__(self, most: int, parent: LearntSecrets | None = None) -> None:
        self.most = most
        self.parent = parent
        self.version = 0
        self._values: dict[str, None] = {}  # in the order learnt: the first is the oldest
        self._lock = threading.Lock()

    def note(self, values: Iterable[str]) -> None:
        """Remember `values` (too short ones are not secrets: `_MIN_SECRET_LENGTH`), and a `Bearer <token>`'s token."""
        given = list(values)
        fresh = {value for value in given if len(value) >= _MIN_SECRET_LENGTH}
        fresh |= {part for value in given for part in value.split() if len(part) >= _MIN_TOKEN_PART}
        with self._lock:
            new = [value for value in fresh if value not in self._values]
            if not new:
                return
            for value in new:
                self._values[value] = None
            while len(self._values) > self.most:
                del self._values[next(iter(self._values))]
            self.version += 1
        if self.parent is not None:
            self.parent.note(new)

    def values(self) -> list[str]:
        with self._lock:
            return list(self._values)


# Every backend's learnt secrets, for the log filter (a token fetched for one backend, masked in any record).
LEARNT = LearntSecrets(most=1024)


class SecretFilter(logging.Filter):
    """A logging filter that masks the given values, in their escaped forms too, and those `learnt` at run time,
    in every record that passes through it; and the credentials of any URL in it (`://user:password@`)."""

    def __init__(self, secrets: Iterable[str], learnt: LearntSecrets | None = None) -> None:
        super().__init__()
        self._given = list(secrets)  # as given: the caller chose them (no minimum length)
        self.learnt = learnt
        self.secrets: list[str] = []
        self._pattern: re.Pattern[str] | None = None
        self._version = -1
        self._current()

    def _current(self) -> re.Pattern[str] | None:
        """The pattern of the secrets, rebuilt only when `learnt` has learnt one since it was built."""
        version = self.learnt.version if self.learnt is not None else 0
        if version != self._version:
            learnt = self.learnt.values() if self.learnt is not None else []
            secrets = with_escaped_forms([*self._given, *learnt], min_length=1)
            self.secrets = secrets
            self._pattern = re.compile("|".join(re.escape(s) for s in secrets)) if secrets else None
            self._version = version
        return self._pattern

    def _masked(self, text: str, pattern: re.Pattern[str] | None) -> str:
        return masked_userinfo(pattern.sub(MASK, text) if pattern is not None else text)

    def filter(self, record: logging.LogRecord) -> bool:
        pattern = self._current()
        # The message is formatted here once, for good: the handler's formatter takes it as it is (its args would
        # be formatted again, ~1.5 us a record), and an exception's masked text added below, `%` signs and all, is
        # never read as a template. Filters that key on the template (`ThrottledLibraries`) run before this one.
        record.msg = self._masked(record.getMessage(), pattern)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1])
            masked = self._masked(text, pattern)
            if masked != text:
                # Tracebacks would print the secret; keep the masked message only.
                record.msg = f"{record.msg} ({type(record.exc_info[1]).__name__}: {masked})"
                record.exc_info = None
                record.exc_text = None
        return True
