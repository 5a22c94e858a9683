"""A backend's credentials (`backends[].auth`) as the transport applies them, and what the backend said of them.

`BackendCredentials` is made once per backend and shared by all its sessions, so a client-credentials token is
fetched once per expiry for all of them. Each HTTP session gets a `BackendAuth` (an `httpx2.Auth`):

- `service()` for the backend's shared session: the configured headers, or the gateway's own
  client-credentials token. A `token_exchange` backend's shared session (listing, health checks; never a
  caller's call) also carries the gateway's client-credentials token for the backend's audience.
- `for_caller(holder)` for a caller's dedicated session of a `token_exchange` backend: that caller's token
  exchanged (RFC 8693) for one with the backend's audience, cached per (caller, backend, caller's token).

A backend answering 401 to a cached token gets one new token and the request again (the token may have been
revoked or expired early); a 401 or 403 after that is remembered (`refused`): health shows the backend
`unauthenticated` and the call's error says the backend refused the token. Nothing here logs a token.
`prepare()` fetches a due token before a request is handed to the SDK's transport, so a token endpoint that
is down or refuses is the call's own clear error rather than a failure inside the transport.

Every value sent that the config did not hold at start (a fetched token, a rotated secret file's content) is
noted in `learnt` as it arrives: a backend's error echoing it is masked like a configured secret (backends/
secrets.py, `LearntSecrets`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncGenerator, Awaitable
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx2

from vmcp_opt.backends.errors import CredentialError
from vmcp_opt.backends.secrets import LEARNT, LearntSecrets
from vmcp_opt.backends.token_client import Token, TokenCache, TokenEndpoint, unanswered
from vmcp_opt.config import BackendConfig
from vmcp_opt.config.backend_auth import SecretRef

SERVICE_KEY = "service"
REFUSED = (401, 403)
# Secret values one backend's credentials remember having sent: each caller's exchanged token is one.
LEARNT_MOST = 256


class SubjectToken:
    """A caller's incoming token, as the caller's dedicated sessions read it; updated when the caller's is.

    Its repr never shows the token."""

    __slots__ = ("_value", "key")

    def __init__(self, caller_id: str, value: str) -> None:
        self.key = ""
        self._value = ""
        self.update(caller_id, value)

    def update(self, caller_id: str, value: str) -> None:
        if value != self._value:
            self._value = value
            self.key = f"{caller_id}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"

    @property
    def value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SubjectToken(***)"


class BackendCredentials:
    def __init__(self, config: BackendConfig, base_dir: Path) -> None:
        self.name = config.name
        self.auth = config.auth
        self.base_dir = base_dir
        oauth = self.auth.type in ("oauth_client_credentials", "token_exchange")
        self.endpoint = TokenEndpoint(config.name, self.auth, base_dir) if oauth else None
        # A caller waits for a token no longer than a fetch may take (auth.timeout), then gets the clear error.
        timeout = self.auth.timeout
        self.cache = TokenCache(self.auth.refresh_before, timeout, lambda: unanswered(config.name, timeout))
        self.refused: int | None = None  # the status of the backend's last refusal of the service credentials
        self._headers: tuple[tuple[object, ...], dict[str, str]] | None = None  # (their version, the values)
        self.learnt = LearntSecrets(LEARNT_MOST, parent=LEARNT)

    @property
    def per_caller(self) -> bool:
        """Every caller's request needs a session of its own, carrying that caller's exchanged token."""
        return self.auth.type == "token_exchange"

    def headers(self) -> dict[str, str]:
        """The static headers (type header), as their secrets hold them now: a file rotated while the gateway
        runs is read again on the next request (its stat, not its content, is checked on each). `CredentialError`
        when one cannot be read."""
        version = self._headers_version()
        if self._headers is None or version != self._headers[0]:
            values = {name: self._read(f"headers.{name}", ref) for name, ref in self.auth.headers.items()}
            self.learnt.note(values.values())
            self._headers = (version, values)
        return self._headers[1]

    def _headers_version(self) -> tuple[object, ...]:
        """What changes when a header's secret does: a file's identity and times, a variable's value."""
        version: list[object] = []
        for ref in self.auth.headers.values():
            if ref.env is not None:
                version.append(os.environ.get(ref.env))
                continue
            try:
                stat = (self.base_dir / str(ref.file)).stat()
            except OSError:
                version.append(None)
                continue
            version.append((stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))
        return tuple(version)

    def child_env(self) -> dict[str, str]:
        """The stdio process's environment variables from secrets (type header), read now."""
        values = {name: self._read(f"env.{name}", ref) for name, ref in self.auth.env.items()}
        self.learnt.note(values.values())
        return values

    def _read(self, field: str, ref: SecretRef) -> str:
        try:
            return ref.prefix + ref.read(self.base_dir)
        except ValueError as exc:
            raise CredentialError(self.name, f"auth.{field}", str(exc)) from None

    def service(self) -> BackendAuth:
        return BackendAuth(self, None)

    def for_caller(self, subject: SubjectToken) -> BackendAuth:
        return BackendAuth(self, subject)

    # --- tokens ----------------------------------------------------------------------------------

    def fresh(self, subject: SubjectToken | None) -> str | None:
        return self.cache.fresh(subject.key if subject is not None else SERVICE_KEY)

    async def token(self, subject: SubjectToken | None) -> str | None:
        """The bearer token for a request, from the cache or fetched once for all waiters."""
        endpoint = self.endpoint
        if endpoint is None:
            return None
        if subject is None:
            return await self.cache.get(SERVICE_KEY, lambda: self._noted(endpoint.client_credentials()))
        value = subject.value
        return await self.cache.get(subject.key, lambda: self._noted(endpoint.exchange(value)))

    async def _noted(self, fetch: Awaitable[Token]) -> Token:
        """The fetched token, noted in `learnt` (once per fetch, not per request)."""
        token = await fetch
        self.learnt.note([token.value])
        return token

    def invalidate(self, subject: SubjectToken | None, value: str) -> None:
        self.cache.invalidate(subject.key if subject is not None else SERVICE_KEY, value)

    def observe(self, subject: SubjectToken | None, status: int) -> None:
        if subject is not None:
            return  # one caller's token refused says nothing of the backend's own credentials
        if status in REFUSED:
            self.refused = status
        elif status < 400:
            self.refused = None


class BackendAuth(httpx2.Auth):
    """Adds the backend's credentials to every HTTP request of one session and watches for refusals."""

    def __init__(self, credentials: BackendCredentials, subject: SubjectToken | None) -> None:
        self.credentials = credentials
        self.subject = subject
        self.last_status: int | None = None
        self._static = credentials.auth.type == "header"
        self._headers = credentials.headers() if self._static else {}  # the last ones read

    async def prepare(self) -> None:
        """Read the headers' secrets or fetch a due token now, raising `CredentialError` (the transport must not
        be the one to fail)."""
        if self._static:
            self._headers = self.credentials.headers()
        if self.credentials.endpoint is not None and self.credentials.fresh(self.subject) is None:
            await self.credentials.token(self.subject)

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        if self._static:
            # Unreadable between `prepare()` and now (a file being rewritten): the last ones read go.
            with suppress(CredentialError):
                self._headers = self.credentials.headers()
        for name, value in self._headers.items():
            request.headers[name] = value
        token = await self._token()
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and token is not None:
            self.credentials.invalidate(self.subject, token)
            renewed = await self._token()
            if renewed is not None and renewed != token:
                request.headers["Authorization"] = f"Bearer {renewed}"
                response = yield request
        self.last_status = response.status_code
        self.credentials.observe(self.subject, response.status_code)

    async def _token(self) -> str | None:
        cached = self.credentials.fresh(self.subject)
        if cached is not None or self.credentials.endpoint is None:
            return cached
        try:
            return await self.credentials.token(self.subject)
        except CredentialError:
            return None  # sent without: `prepare()` reports the failure to the call; the transport must go on

    def refusal(self) -> CredentialError | None:
        """The error for a request the backend just refused (401/403), if it did."""
        if self.last_status in REFUSED:
            return CredentialError(self.credentials.name, "backend refused the token", f"HTTP {self.last_status}")
        return None

    def __repr__(self) -> str:
        return f"BackendAuth({self.credentials.name!r}, per_caller={self.subject is not None})"


def with_auth_health(summary: dict[str, Any]) -> dict[str, Any]:
    """A backend summary whose health says `unauthenticated` when the backend refused the gateway's credentials
    (not `unhealthy`: restarting it will not help; its credentials need fixing)."""
    if summary.get("refused") and isinstance(summary.get("health"), dict):
        summary["health"] = {**summary["health"], "state": "unauthenticated"}
    return summary
