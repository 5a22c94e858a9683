"""Tokens the gateway gets from an authorization server for a backend: client credentials and RFC 8693 exchange.

`TokenEndpoint` speaks to the token endpoint (found in the issuer's metadata when only `issuer` is configured,
RFC 8414 then OpenID discovery). `TokenCache` keeps tokens per key until `refresh_before` seconds before they
expire (a token that lives shorter than twice that: until half its life); when one is due, one request fetches it for
every waiter, who shares its outcome, a refusal included (single-flight), so a burst of calls costs one token request.
While it runs, a caller is answered from the token it replaces if that has not expired: only a caller with no usable
token waits. Failures are `CredentialError`s naming the backend and the step, with the endpoint's `error` code but
never a token, secret, URL or response body beyond that code. The client id and secret go in HTTP Basic
form-urlencoded (RFC 6749 §2.3.1, `client_basic_auth`): sent raw, a secret holding `+` or `%` was refused.

What an endpoint can make the gateway spend is bounded: a fetch takes at most `auth.timeout` seconds in all, its
discovery (two metadata requests, and the wait for another fetch's discovery) and its token request together, not
each of them (they were bounded one by one: three requests, 30 s by default, the whole of `timeouts.connect`);
a caller waits for a token at most as long, counted from its arrival, even when the fetch it waited on was
cancelled and it fetches anew. A fetch cut off leaves nothing behind: no token endpoint discovered, no token
cached, no fetch in flight, so the next call tries again. A body is read up to `MAX_ANSWER_BYTES` (the whole body
was read into memory: a 300 MB answer took 600 MB). An `expires_in` that is not a positive finite number counts as
absent: a negative or NaN one made every HTTP request to the backend fetch a new token.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import httpx2

from vmcp_opt.backends.errors import CredentialError
from vmcp_opt.backends.tls import client_context
from vmcp_opt.config.backend_auth import BackendAuthConfig, client_basic_auth
from vmcp_opt.single_flight import SingleFlight

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# `auth.subject_token_type` → the URN RFC 8693 names it by.
SUBJECT_TOKEN_TYPES = {"access_token": ACCESS_TOKEN_TYPE, "jwt": "urn:ietf:params:oauth:token-type:jwt"}
DEFAULT_LIFETIME = 300.0  # seconds a token without `expires_in` is kept (less `refresh_before`)
MAX_CACHED = 10_000  # tokens per backend; past it the ones expiring first are dropped
MAX_ANSWER_BYTES = 64 * 1024  # of a token or metadata answer read: a token response is a few KB at most


class _Unanswered(Exception):
    """A token endpoint request that failed: the reason, with no secret and no body."""


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


async def _bounded(http: httpx2.AsyncClient, method: str, url: str, **kwargs: object) -> _Answer:
    """`method url`, its body read up to `MAX_ANSWER_BYTES`; in time, the whole fetch's deadline bounds it."""
    body = bytearray()
    try:
        async with http.stream(method, url, **kwargs) as response:  # type: ignore[arg-type]
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise _Unanswered(f"an answer larger than {MAX_ANSWER_BYTES // 1024} KiB")
    except httpx2.HTTPError as exc:
        raise _Unanswered(type(exc).__name__) from None
    return _Answer(response.status_code, bytes(body))


def _lifetime(expires_in: object) -> float:
    """Seconds a token lives: `expires_in` when it is a positive finite number, else `DEFAULT_LIFETIME`."""
    try:
        seconds = float(expires_in)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_LIFETIME
    return seconds if math.isfinite(seconds) and seconds > 0 else DEFAULT_LIFETIME


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float  # time.monotonic() when it must no longer be used
    refresh_at: float = float("inf")  # when the cache replaces it (set by `TokenCache`)

    def __repr__(self) -> str:  # never the value
        return f"Token(expires_in={self.expires_at - time.monotonic():.0f}s)"


class TokenEndpoint:
    """The authorization server's token endpoint, with the gateway's client credentials for one backend."""

    def __init__(self, backend: str, config: BackendAuthConfig, base_dir: Path) -> None:
        self.backend = backend
        self.config = config
        self.base_dir = base_dir
        self._url = config.token_url
        self._discovery = anyio.Lock()
        self.requests = 0  # token requests made (tests and the bench count them)

    async def client_credentials(self) -> Token:
        form = {"grant_type": "client_credentials", **self._target()}
        return await self._post(form, "token endpoint refused the client credentials")

    async def exchange(self, subject_token: str) -> Token:
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": SUBJECT_TOKEN_TYPES[self.config.subject_token_type or "access_token"],
            "requested_token_type": ACCESS_TOKEN_TYPE,
            **self._target(),
        }
        return await self._post(form, "token exchange refused")

    def _target(self) -> dict[str, str]:
        form = {}
        if self.config.scopes:
            form["scope"] = " ".join(self.config.scopes)
        if self.config.audience:
            form["audience"] = self.config.audience
        if self.config.resource:
            form["resource"] = self.config.resource
        return form

    async def _post(self, form: dict[str, str], refused: str) -> Token:
        """One token, within `auth.timeout` in all: discovery included, so a slow authorization server holds the
        callers waiting for this fetch one timeout, not one per request."""
        try:
            with anyio.fail_after(self.config.timeout):
                return await self._request_token(form, refused)
        except TimeoutError:
            raise unanswered(self.backend, self.config.timeout) from None

    async def _request_token(self, form: dict[str, str], refused: str) -> Token:
        url = await self._token_url()
        assert self.config.client_id is not None and self.config.client_secret is not None
        try:
            secret = self.config.client_secret.read(self.base_dir)
        except ValueError as exc:
            raise CredentialError(self.backend, "client secret", str(exc)) from None
        auth = client_basic_auth(self.config.client_id, secret)
        self.requests += 1
        try:
            async with httpx2.AsyncClient(timeout=self.config.timeout, verify=await client_context()) as http:
                response = await _bounded(http, "POST", url, data=form, auth=auth)
        except _Unanswered as exc:
            raise CredentialError(self.backend, "token endpoint unreachable", str(exc)) from None
        if response.status != 200:
            raise CredentialError(self.backend, refused, f"HTTP {response.status} {_error_code(response)}")
        try:
            body = response.json()
        except ValueError:
            raise CredentialError(self.backend, refused, "the answer is not JSON") from None
        value = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise CredentialError(self.backend, refused, "the answer carries no access_token")
        assert isinstance(body, dict)
        return Token(value, time.monotonic() + _lifetime(body.get("expires_in")))

    async def _token_url(self) -> str:
        if self._url is not None:
            return self._url
        async with self._discovery:
            if self._url is None:
                self._url = await self._discover()
        return self._url

    async def _discover(self) -> str:
        assert self.config.issuer is not None
        issuer = self.config.issuer.rstrip("/")
        urls = [f"{issuer}/.well-known/oauth-authorization-server", f"{issuer}/.well-known/openid-configuration"]
        async with httpx2.AsyncClient(timeout=self.config.timeout, verify=await client_context()) as http:
            for url in urls:
                try:
                    response = await _bounded(http, "GET", url)
                    metadata = response.json() if response.status == 200 else None
                except (_Unanswered, ValueError):
                    continue
                endpoint = metadata.get("token_endpoint") if isinstance(metadata, dict) else None
                if isinstance(endpoint, str) and endpoint:
                    return endpoint
        raise CredentialError(self.backend, "token endpoint discovery", f"no token_endpoint in {issuer}'s metadata")


def unanswered(backend: str, seconds: float) -> CredentialError:
    """A fetch, or a caller's wait for one, past `auth.timeout`: the backend and the bound, no URL or secret."""
    return CredentialError(backend, "token endpoint unreachable", f"no answer within {seconds:g}s (auth.timeout)")


def _error_code(response: _Answer) -> str:
    """The OAuth `error` code of a refusal (`invalid_client`, `invalid_grant`), never the rest of the body."""
    try:
        body = response.json()
    except ValueError:
        return ""
    code = body.get("error") if isinstance(body, dict) else None
    return str(code)[:64] if isinstance(code, str) and code.replace("_", "").isalnum() else ""


class TokenCache:
    """Tokens by key, each fetched once per expiry for all waiters.

    Waiters share the fetch's outcome, a failure included: a burst of calls while the token endpoint is slow
    or refusing costs one request and one `timeout`, not one of each per waiter in turn. A token due for refresh
    but not expired is served to the callers arriving while its refresh runs, and to all when the refresh fails
    (the endpoint's blip is not the calls' failure). A caller waits at most `wait` seconds from its arrival, then
    gets `overdue()`: the fetch bounds itself, but a fetch whose caller is cancelled ends without an outcome, and
    its waiters fetch anew (single_flight.py)."""

    def __init__(
        self,
        refresh_before: float,
        wait: float = math.inf,
        overdue: Callable[[], Exception] = lambda: TimeoutError("no token in time"),
    ) -> None:
        self.refresh_before = refresh_before
        self._tokens: dict[str, Token] = {}
        # A flight's outcome is the token's value, or the failure every waiter gets.
        self._flights: SingleFlight[str, str | Exception] = SingleFlight(wait, overdue)

    def fresh(self, key: str) -> str | None:
        """The cached token if it is not due for refresh: the hot path, no await."""
        token = self._tokens.get(key)
        if token is not None and time.monotonic() < token.refresh_at:
            return token.value
        return None

    async def get(self, key: str, fetch: Callable[[], Awaitable[Token]]) -> str:
        outcome = await self._flights.get(
            key, lambda: self._fetch(key, fetch), ready=lambda: self.fresh(key), meanwhile=lambda: self._unexpired(key)
        )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _unexpired(self, key: str) -> str | None:
        token = self._tokens.get(key)
        return token.value if token is not None and time.monotonic() < token.expires_at else None

    async def _fetch(self, key: str, fetch: Callable[[], Awaitable[Token]]) -> str | Exception:
        """A new token's value; when the fetch fails, the token it was to replace while it has not expired, else
        the failure."""
        try:
            return self._store(key, await fetch())
        except Exception as exc:
            unexpired = self._unexpired(key)
            return exc if unexpired is None else unexpired

    def _store(self, key: str, token: Token) -> str:
        # `refresh_before` ahead of expiry; a token that lives shorter than twice that, at half its life.
        lifetime = token.expires_at - time.monotonic()
        token = replace(token, refresh_at=token.expires_at - min(self.refresh_before, lifetime / 2))
        if len(self._tokens) >= MAX_CACHED:
            self._evict()
        self._tokens[key] = token
        return token.value

    def invalidate(self, key: str, value: str | None = None) -> None:
        """Drop the cached token (only if it is still `value`: a newer one stays)."""
        token = self._tokens.get(key)
        if token is not None and (value is None or token.value == value):
            del self._tokens[key]

    def _evict(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self._tokens.items() if t.expires_at <= now]:
            del self._tokens[key]
        for key in sorted(self._tokens, key=lambda k: self._tokens[k].expires_at)[: len(self._tokens) // 10]:
            del self._tokens[key]
