"""Admission: every request that reaches a handler becomes a (`Caller`, `Exchange`) here, once.

This is the one place that reads the transport to learn who called: the SDK's connection object (which
the SDK exposes to handlers only through a private field of its session), the HTTP headers, the
handshake's client info. Everything below gets the `Caller`.

How a caller is identified:
- a transport session (a 2025-11-25 session over HTTP or stdio; a 2026-07-28 client over stdio, whose
  requests share the pipe): `session:<id>` for that session's life, a digest of the HTTP session id (the
  same on every replica serving it) or, over stdio, random;
- a 2026-07-28 HTTP request carrying an `Authorization` header: `credential:<keyed digest>`, the same
  for every request with that credential (the header itself is never kept);
- anything else is anonymous: `anonymous:<random id>`, never the same twice.

A request refused before any session served it (it named a session another principal opened, or a session
limit refused it) has a caller all the same, for the audit log and the metrics: `refused_caller`, by its verified
principal and address; the session it named only by that session's caller id (`tell_refused`, `refused_stranger`).

Who the caller *is* comes from authentication: over HTTP the verified `Identity` the transport's
middleware (server/authentication.py) left in the request's scope, fresh on every request (a session's
token may be refreshed, or its holder change); over stdio the local OS user.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import weakref
from collections.abc import Callable
from typing import Any, Literal

import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import Scope

from vmcp_opt.auth import Caller, CallerLifetime, CredentialIds, Identification
from vmcp_opt.auth.caller import VERIFIED, address_key, caller_key, subject_key
from vmcp_opt.auth.identity import SCOPE_KEY, Identity, local_user
from vmcp_opt.display import printable
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing import Exchange
from vmcp_opt.routing.round_trips import input_responses, round_of

logger = logging.getLogger(__name__)
_log = ThrottledLog(logger)
Ctx = ServerRequestContext[Any, Any]
Transport = Literal["http", "stdio"]
_STATE_KEY = "vmcp.caller"
# Set in an HTTP request's scope once its rate-limit tokens are taken (server/rate_limit_gate.py).
LIMITS_TAKEN_KEY = "vmcp.rate_limits_taken"
# What hears of an HTTP request refused before any session served it (`Telemetry.session_refused`): the refused
# caller (`refused_caller`), the reason (a setting, or "session_owner") and the session it named, as a caller id.
SessionRefused = Callable[[Caller, str, str | None], None]


class Admission:
    def __init__(self, transport: Transport, credentials: CredentialIds | None = None) -> None:
        self.transport = transport
        self.credentials = credentials or CredentialIds()
        self._local_user = local_user() if transport == "stdio" else None
        # 2026-07-28 stdio: a fresh Connection per request, all on the pipe's one outbound channel.
        self._by_channel: weakref.WeakKeyDictionary[object, Caller] = weakref.WeakKeyDictionary()

    def admit(self, ctx: Ctx) -> tuple[Caller, Exchange]:
        caller = self.caller(ctx)
        exchange = Exchange(
            method=ctx.method,
            session=ctx.session,
            request_id=ctx.request_id,
            round=round_of(ctx.method, ctx.params, ctx.protocol_version),
            input_responses=input_responses(ctx.params),
            meta=ctx.meta,
            headers=getattr(ctx.request, "headers", None),
            limits_taken=_limits_taken(ctx.request),
        )
        return caller, exchange

    def caller(self, ctx: Ctx) -> Caller:
        connection = connection_of(ctx)
        identity = self._local_user or _identity(ctx.request)
        address = _address(ctx.request)
        if connection.has_standalone_channel and connection.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            # a handshake-era session: one Caller id for its life
            return self._session_caller(connection, identity, address)
        if connection.has_standalone_channel:
            return self._channel_caller(connection, identity)  # 2026-07-28 over stdio
        header = _authorization(ctx.request)
        if header is not None:
            how = identity.method if identity is not None else Identification.CREDENTIAL
            return _caller(connection, self.credentials.id_of(header), how, identity=identity, address=address)
        return _caller(connection, f"anonymous:{secrets.token_hex(8)}", Identification.ANONYMOUS, address=address)

    def budget_key(self, ctx: Ctx) -> str:
        """`caller_key(self.caller(ctx))`, without making a 2026-07-28 HTTP request's `Caller` (every request pays
        this: server/in_flight.py); a session's `Caller` is kept, so it is asked for."""
        connection = connection_of(ctx)
        if connection.has_standalone_channel:
            return caller_key(self.caller(ctx))
        identity = _identity(ctx.request)  # the middleware is HTTP's: no local user
        if identity is not None and identity.method in VERIFIED:
            return subject_key(identity.method, identity.subject)
        address = _address(ctx.request)
        return address_key(address) if address is not None else caller_key(self.caller(ctx))

    def _session_caller(self, connection: Connection, identity: Identity | None, address: str | None) -> Caller:
        cached = connection.state.get(_STATE_KEY)
        if (
            isinstance(cached, Caller)
            and cached.capabilities is connection.client_capabilities
            and _same_identity(cached, identity)
        ):
            return cached
        previous = cached.lifetime if isinstance(cached, Caller) else None
        lifetime = previous or CallerLifetime()
        caller = _caller(
            connection,
            cached.id if isinstance(cached, Caller) else _session_id(connection),
            _how(identity),
            back_channel=True,
            lifetime=lifetime,
            identity=identity,
            address=cached.address if isinstance(cached, Caller) else address,
        )
        if previous is None:
            connection.exit_stack.push_async_callback(lifetime.end)
        connection.state[_STATE_KEY] = caller
        return caller

    def _channel_caller(self, connection: Connection, identity: Identity | None) -> Caller:
        channel = connection.outbound
        cached = self._by_channel.get(channel)
        if cached is not None and cached.capabilities == connection.client_capabilities:
            return cached
        caller_id = cached.id if cached else f"session:{secrets.token_hex(8)}"
        caller = _caller(connection, caller_id, _how(identity), identity=identity)
        self._by_channel[channel] = caller
        return caller


def session_caller(connection: Connection) -> Caller | None:
    """The caller a handshake-era session was last admitted as (None before its first request)."""
    cached = connection.state.get(_STATE_KEY)
    return cached if isinstance(cached, Caller) else None


def connection_of(ctx: Ctx) -> Connection:
    """The SDK's per-client connection behind a request. The SDK gives handlers no public way to it."""
    connection: Connection = ctx.session._connection
    return connection


def _caller(
    connection: Connection,
    caller_id: str,
    how: Identification,
    *,
    back_channel: bool = False,
    lifetime: CallerLifetime | None = None,
    identity: Identity | None = None,
    address: str | None = None,
) -> Caller:
    params = connection.client_params
    info: types.Implementation | None = params.client_info if params is not None else None
    who = identity.caller_fields() if identity is not None else {}
    return Caller(
        id=caller_id,
        identified_by=how,
        protocol_version=connection.protocol_version,
        client_name=info.name if info is not None else None,
        client_version=info.version if info is not None else None,
        capabilities=connection.client_capabilities,
        back_channel=back_channel,
        lifetime=lifetime,
        address=address,
        **who,
    )


def _session_id(connection: Connection) -> str:
    """A digest of the transport's session id where there is one, so every replica serving the session knows
    its caller by the same id (one rate-limit budget); the id itself is a secret and is never logged."""
    if connection.session_id is None:
        return f"session:{secrets.token_hex(8)}"
    return session_caller_id(connection.session_id)


def session_caller_id(session_id: str) -> str:
    """The caller id of an HTTP session's requests: a short digest of its id (a bearer secret, never written)."""
    return f"session:{hashlib.sha256(session_id.encode()).hexdigest()[:16]}"


def refused_caller(scope: Scope) -> Caller:
    """Who sent an HTTP request refused before a session served it (another principal's session named, a session
    limit reached): the verified principal authentication left in the scope, and the client's address. Its id is
    the key the rate limits charge such a caller to (`subject:<digest>`, else `address:<ip>`): the session the
    request named is not the caller's own, and it may have none."""
    client = scope.get("client")
    address = str(client[0]) if client else None
    identity = scope.get(SCOPE_KEY)
    if isinstance(identity, Identity) and identity.method in VERIFIED and identity.subject:
        who = {key: value for key, value in identity.caller_fields().items() if key != "token"}
        return Caller(subject_key(identity.method, identity.subject), identity.method, "", address=address, **who)
    return Caller(address_key(address or "?"), Identification.ANONYMOUS, "", address=address)


def tell_refused(told: SessionRefused | None, scope: Scope, reason: str, session_id: str | None = None) -> Caller:
    """`told` hears of a request refused before a session served it (`refused_caller`, `reason`, the named
    session's caller id); its failure is logged, never the client's, whose answer stays the refusal. The caller,
    for the refuser's own log line."""
    caller = refused_caller(scope)
    if told is not None:
        try:
            told(caller, reason, session_caller_id(session_id) if session_id is not None else None)
        except Exception:
            _log.warning("told", "sessions: telemetry of a refused request failed", exc_info=True)
    return caller


def refused_stranger(told: SessionRefused | None, scope: Scope, session_id: str, log: ThrottledLog) -> None:
    """A request naming a session another principal opened, refused (answered as a missing session: no oracle):
    told to `told` and logged (throttled by `log`) with who asked and from where, the session by its caller id
    (its id is its owner's bearer secret)."""
    caller = tell_refused(told, scope, "session_owner", session_id)
    log.warning(
        "owner",
        "sessions: %s (%s) from %s named %s, a session another principal opened; refused",
        printable(caller.subject or "anonymous"),
        caller.id,
        printable(caller.address or "?"),
        session_caller_id(session_id),
    )


def _how(identity: Identity | None) -> Identification:
    """A session caller with a verified credential is known by it; the local OS user by its session."""
    if identity is None or identity.method is Identification.SESSION:
        return Identification.SESSION
    return identity.method


def _same_identity(caller: Caller, identity: Identity | None) -> bool:
    if identity is None:
        return caller.subject is None
    if caller.token is not identity.token and (
        caller.token is None or identity.token is None or caller.token.value != identity.token.value
    ):
        return False  # a refreshed token: exchanges for backends must use the new one
    return (caller.subject, caller.groups, caller.roles, caller.client_id, caller.scopes) == (
        identity.subject,
        identity.groups,
        identity.roles,
        identity.client_id,
        identity.scopes,
    )


def _identity(request: Any) -> Identity | None:
    scope = getattr(request, "scope", None)
    identity = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    return identity if isinstance(identity, Identity) else None


def _limits_taken(request: Any) -> bool:
    """The HTTP gate took this request's rate-limit tokens (server/rate_limit_gate.py)."""
    scope = getattr(request, "scope", None)
    return isinstance(scope, dict) and scope.get(LIMITS_TAKEN_KEY) is True


def _authorization(request: Any) -> str | None:
    headers = getattr(request, "headers", None)
    value = headers.get("authorization") if headers is not None else None
    return value if isinstance(value, str) and value.strip() else None


def _address(request: Any) -> str | None:
    """The peer's address of an HTTP request (Starlette's `request.client`); None over stdio."""
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    return host if isinstance(host, str) else None
