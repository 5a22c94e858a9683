"""Authentication in front of `/mcp`: a bearer credential in, a verified `Identity` in the ASGI scope out.

An ASGI middleware around the MCP endpoint only (health, readiness and the metadata stay open; `/readyz` and
`/metrics` show a caller whose credential `verifies` more, and record its refusals as this endpoint's). It
refuses, before the MCP machinery sees the request:
- no credential, or one of another scheme (`Basic …`): 401 with `WWW-Authenticate: Bearer
  resource_metadata="…"` (RFC 9728; RFC 6750 §3.1: no error code), so a client can discover the authorization
  server;
- a credential the authenticator does not accept: 401 `invalid_token`;
- a valid token without the required scopes: 403 `insufficient_scope` naming them;
- a token in the query string (`access_token=`): 400 `invalid_request`, whatever else the request carries;
- an unknown opaque token past the introspection budget: 429 (this client address's) or 503 (the total's), with
  `Retry-After` (auth/introspection.py).
Admission (server/admission.py) reads the identity from the scope; nothing below reads headers.

The verified principal also goes into the scope as the SDK's `AuthenticatedUser` (without the credential),
so the SDK binds each session to the principal that opened it: another credential naming that session id is
answered as if it did not exist. `session_owner` is the same principal as a digest, which a session's record
in Redis keeps for the replicas that restore it (server/shared_sessions.py).

A stream held open (a GET stream, fresh or resumed; a 2026-07-28 `subscriptions/listen`, server/listen.py) ends
when the credential that opened it stops being valid, as a request with it would be refused: at its expiry (`exp`
plus the verifier's `clock_skew`), or when a re-check refuses it (a revoked API key, an opaque token the issuer no
longer vouches for). The re-check runs when the keys file is re-read (at the first request after an edit) and
every `RECHECK_INTERVAL` besides: a timer per stream, nothing per event. Its client reconnects, with a fresh
credential or to a 401.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.auth.provider import AccessToken
from starlette.types import ASGIApp, Receive, Scope, Send

from vmcp_opt.auth import Identification, errors
from vmcp_opt.auth.authenticators import Authenticator, check_scopes
from vmcp_opt.auth.errors import AuthError
from vmcp_opt.auth.identity import SCOPE_KEY, BearerToken, Identity
from vmcp_opt.auth.introspection import REQUESTING_ADDRESS, RetryLater
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.server.sessions import client_address
from vmcp_opt.server.streams import ResponseProgress, served_until

logger = logging.getLogger(__name__)
_refusals = ThrottledLog(logger, level=logging.INFO)

QUERY_TOKEN_NAMES = frozenset({"access_token", "token", "api_key", "apikey", "key"})
# What an error_description or scope may hold (RFC 6750 §3: %x20-21 / %x23-5B / %x5D-7E), and how much of it.
CHALLENGE_CHARACTERS = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
MAX_CHALLENGE_TEXT = 300
# Where a request's scope holds what makes its `CredentialLapse` (`credential_lapse`), for a handler that holds it open.
LAPSE_KEY = "vmcp.credential_lapse"
# Seconds between re-checks of a held stream's credential when no keys file re-read prompts one sooner.
RECHECK_INTERVAL = 30.0


class CredentialLapse:
    """When the credential a held stream was opened with stops being valid. `wait` returns then: at `expires_at`
    (Unix time; None: no expiry), or once `recheck` says the credential is refused. A re-check is made each
    `RECHECK_INTERVAL`, and sooner when `prompt` returns (the keys file was re-read)."""

    def __init__(
        self,
        expires_at: float | None,
        recheck: Callable[[], Awaitable[bool]],
        prompt: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.expires_at = expires_at
        self._recheck = recheck
        self._prompt = prompt

    async def wait(self) -> None:
        deadline = math.inf
        if self.expires_at is not None:
            deadline = anyio.current_time() + max(0.0, self.expires_at - time.time())
        with anyio.move_on_at(deadline):
            while True:
                with anyio.move_on_after(RECHECK_INTERVAL):
                    await (self._prompt() if self._prompt is not None else anyio.sleep_forever())
                if not await self._recheck():
                    return


def credential_lapse(scope: Mapping[str, Any]) -> CredentialLapse | None:
    """The lapse of the credential an authenticated request came with; None without authentication."""
    make = scope.get(LAPSE_KEY)
    return make() if callable(make) else None


class RequireAuthentication:
    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        resource_metadata_url: str | None = None,
        required_scopes: list[str] | None = None,
        counted: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.resource_metadata_url = resource_metadata_url
        self.required_scopes = required_scopes or []
        # How long past its `exp` the verifier still accepts a token: a stream ends when a request would be refused.
        self.leeway = _clock_skew(authenticator)
        # Told each request's outcome ("accepted", or the refusal's RFC 6750 error, "missing" when none) and
        # the client's address: the metrics count them, the audit log records refusals.
        self.counted = counted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        checked = await self.checked(scope)
        if isinstance(checked, AuthError):
            await self._refuse(send, checked)
            return
        scope[SCOPE_KEY] = checked
        scope["user"] = principal(checked)
        scope[LAPSE_KEY] = partial(self._lapse, scope, checked)
        if scope["method"] == "GET":  # a stream held open: the standalone one, or a resumed one
            await self._held_until_lapse(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _held_until_lapse(self, scope: Scope, receive: Receive, send: Send) -> None:
        lapse = credential_lapse(scope)
        assert lapse is not None
        progress = ResponseProgress(send)
        if not await served_until(lapse.wait, partial(self.app, scope, receive, progress)):
            return
        logger.info("auth: a held stream of %s ended: its credential expired or was revoked", scope[SCOPE_KEY].subject)
        if not progress.started:
            await self._refuse(send, errors.invalid_token("the credential expired or was revoked"))
        elif not progress.finished:  # an SSE stream's end, as when the server closes it (its client reconnects)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _lapse(self, scope: Scope, identity: Identity) -> CredentialLapse:
        """When the credential of an accepted request (`scope`) stops being accepted; see the module's docstring."""
        credential = BearerToken(_bearer_credential(scope))
        address = client_address(scope)
        expires_at = None if identity.expires_at is None else identity.expires_at + self.leeway
        return CredentialLapse(
            expires_at, partial(self._still_accepts, credential, address), getattr(self.authenticator, "reloaded", None)
        )

    async def _still_accepts(self, credential: BearerToken, address: str) -> bool:
        """Whether the authenticator accepts `credential` now (with the required scopes). Yes when it cannot say
        (the issuer unreachable, the introspection budget spent): a stream is ended for a refusal, not an outage."""
        requester = REQUESTING_ADDRESS.set(address)
        try:
            check_scopes(await self.authenticator.authenticate(credential.value), self.required_scopes)
        except RetryLater:
            return True
        except AuthError as refused:
            return refused.status not in (401, 403)
        except Exception as exc:  # its type only: an authenticator's error text could quote the credential
            logger.warning(
                "auth: re-checking a held stream's credential failed (%s); it stays open", type(exc).__name__
            )
            return True
        finally:
            REQUESTING_ADDRESS.reset(requester)
        return True

    async def checked(self, scope: Scope) -> Identity | AuthError:
        """The request's verified identity, or why it is refused; either way counted, and a refusal logged and
        audited: on `/mcp`, and on every route that shows a verified caller more (`/readyz`, `/metrics`), where
        a credential refused unrecorded would let anyone try keys unseen."""
        client = scope.get("client")
        address = client[0] if client else None
        try:
            identity = await self._identify(scope)
        except AuthError as refused:
            if self.counted is not None:
                self.counted(refused.error or "missing", address)
            # Once a minute per kind of refusal, not per request: anyone who reaches the port can send them
            # at request rate (the metrics and the audit log, which rotates, count every one).
            _refusals.warning(
                refused.error or "missing",
                "auth: refused %s from %s: %s",
                scope.get("path"),
                address or "?",
                refused.description,
            )
            return refused
        if self.counted is not None:
            self.counted("accepted", address)
        return identity

    async def aclose(self) -> None:
        """Close the authenticator's connections (token introspection), at shutdown."""
        close = getattr(self.authenticator, "aclose", None)
        if close is not None:
            await close()

    async def verifies(self, scope: Scope) -> bool:
        """Whether the request's credential is accepted here (for routes that show more to callers), recorded
        as on `/mcp` (`checked`). A request with no credential at all, a load balancer's probe, is not: it is
        no attempt to authenticate, and counting every probe would bury the refusals that are."""
        if not _offers_credential(scope):
            return False
        return not isinstance(await self.checked(scope), AuthError)

    async def _identify(self, scope: Scope) -> Identity:
        if _credential_in_query(scope):
            raise errors.invalid_request(
                "credentials in the URL query string are refused; send an Authorization header"
            )
        credential = _bearer_credential(scope)
        requester = REQUESTING_ADDRESS.set(client_address(scope))  # whose introspection budget pays
        try:
            identity = await self.authenticator.authenticate(credential)
        finally:
            REQUESTING_ADDRESS.reset(requester)
        check_scopes(identity, self.required_scopes)
        if identity.method is not Identification.TOKEN:
            # An API key is this gateway's own secret: never handed to a token endpoint as a subject token.
            return identity
        return dataclasses.replace(identity, token=BearerToken(credential))  # for token exchange

    async def _refuse(self, send: Send, refused: AuthError) -> None:
        parts = []
        if refused.error is not None:
            parts.append(f'error="{refused.error}"')
            parts.append(f'error_description="{_quoted(refused.description)}"')
        if refused.scope:
            parts.append(f'scope="{_quoted(refused.scope)}"')
        if self.resource_metadata_url:
            parts.append(f'resource_metadata="{self.resource_metadata_url}"')
        challenge = "Bearer " + ", ".join(parts) if parts else "Bearer"
        body = json.dumps({"error": refused.error or "unauthorized", "error_description": refused.description})
        payload = body.encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        if refused.status in (401, 403, 400):
            headers.append((b"www-authenticate", challenge.encode()))
        if isinstance(refused, RetryLater):
            headers.append((b"retry-after", str(refused.retry_after).encode()))
        await send({"type": "http.response.start", "status": refused.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _bearer_credential(scope: Scope) -> str:
    """The request's one `Authorization: Bearer` credential, or `AuthError` saying what is wrong with the header."""
    values: list[bytes] = [value for name, value in scope["headers"] if name == b"authorization"]
    if not values:
        raise errors.missing()
    if len(values) > 1:
        raise errors.invalid_request("more than one Authorization header")
    scheme, _, credential = values[0].decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer":  # no bearer credential at all: the bare challenge, as for no header
        raise AuthError(401, None, "expected `Authorization: Bearer <token>`, not another scheme")
    if not credential.strip():
        raise errors.invalid_token("expected `Authorization: Bearer <token>`")
    return credential.strip()


def _clock_skew(authenticator: Authenticator) -> float:
    """The leeway a token verifier allows past a token's `exp` (`auth.incoming.oauth.clock_skew`); 0 for API keys."""
    skew = getattr(getattr(authenticator, "settings", None), "clock_skew", 0.0)
    return float(skew) if isinstance(skew, int | float) else 0.0


def _offers_credential(scope: Scope) -> bool:
    """An Authorization header of any scheme, or a credential in the query string (which `_identify` refuses)."""
    return any(name == b"authorization" for name, _ in scope["headers"]) or _credential_in_query(scope)


def _credential_in_query(scope: Scope) -> bool:
    query = scope.get("query_string", b"").decode("latin-1")
    return bool(query) and any(
        name.lower() in QUERY_TOKEN_NAMES for name, _ in parse_qsl(query, keep_blank_values=True)
    )


def _quoted(text: str) -> str:
    """`text` fit for a quoted `WWW-Authenticate` value (RFC 6750 §3: printable ASCII without `"` and `\\`): a
    double quote becomes `'`, any other character outside that set (a token header's UTF-8 or control
    characters, echoed in a refusal) `?`, and at most `MAX_CHALLENGE_TEXT` long. The JSON body keeps the text."""
    shown = "".join("'" if c == '"' else c if c in CHALLENGE_CHARACTERS else "?" for c in text)
    return shown if len(shown) <= MAX_CHALLENGE_TEXT else shown[: MAX_CHALLENGE_TEXT - 3] + "..."


def principal(identity: Identity) -> AuthenticatedUser:
    """The SDK's view of a verified caller, for its session binding: who (how verified, and the subject), the
    client and the issuer; never the credential."""
    issuer = identity.claims.get("iss")
    token = AccessToken(
        token="",
        client_id=identity.client_id or "",
        scopes=sorted(identity.scopes),
        subject=f"{identity.method.value}:{identity.subject}",
        claims={"iss": str(issuer)} if issuer is not None else None,
    )
    return AuthenticatedUser(token)


def session_owner(scope: Scope) -> str:
    """A digest of the principal a request comes from (the SDK's `authorization_context`), "" for anyone
    unauthenticated: what a session is bound to."""
    user = scope.get("user")
    if not isinstance(user, AuthenticatedUser):
        return ""
    context = json.dumps(authorization_context(user), sort_keys=True)
    return hashlib.sha256(context.encode()).hexdigest()[:32]
