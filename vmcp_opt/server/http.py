"""The streamable-HTTP endpoint (`/mcp`) with `/healthz`, `/readyz` and `/metrics` (server/diagnostics.py), on
Starlette and uvicorn."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from vmcp_opt.auth.authenticators import build_authenticator, required_scopes
from vmcp_opt.config import LOOPBACK_ADDRESSES, ServerConfig, VmcpConfig
from vmcp_opt.gateway import Gateway, StartupError
from vmcp_opt.server.admission import Admission
from vmcp_opt.server.authentication import RequireAuthentication
from vmcp_opt.server.bad_input import JsonRpcErrorCodes
from vmcp_opt.server.diagnostics import DiagnosticsServer, diagnostics_server, health_routes, metrics_routes
from vmcp_opt.server.drain import Drain
from vmcp_opt.server.event_store import memory_event_store
from vmcp_opt.server.handlers import build_mcp_server
from vmcp_opt.server.held_answers import HeldAnswers
from vmcp_opt.server.host_check import Cors, HostCheck
from vmcp_opt.server.in_flight import RequestsInFlight
from vmcp_opt.server.lazy_stream import LazyStreamSessionManager
from vmcp_opt.server.rate_limit_gate import RateLimitGate
from vmcp_opt.server.replica import ReplicaHeader, replica_id
from vmcp_opt.server.sessions import (
    SessionGate,
    SessionSlots,
    hold_session_slot,
    stream_budget,
    throttle_sdk_refusals,
)
from vmcp_opt.telemetry import Telemetry

if TYPE_CHECKING:
    from vmcp_opt.server.shared_sessions import SharedSessionParts

logger = logging.getLogger(__name__)

# How long a client waits before reconnecting to a stream the gateway closed (milliseconds).
SSE_RETRY_MS = 1000
# Bare names too: a client of a gateway on the scheme's default port (`--port 80`, or a local proxy passing the
# client's Host on) sends `Host: localhost` and `Origin: http://localhost`, without a port.
LOOPBACK_HOSTS = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
LOOPBACK_ORIGINS = [f"http://{host}" for host in LOOPBACK_HOSTS]


def transport_security(server: ServerConfig) -> TransportSecuritySettings:
    """DNS-rebinding protection: only Host values that name this gateway, and our own Origins, are accepted.

    The names are loopback, the address bound (`--host`; for 0.0.0.0 or :: every address and name of this
    machine) and `server.allowed_hosts` (`--allow-host`), each with any port; an entry may be a bare name or
    address (`example.org`, `10.0.0.5`, `fe80::1`) or already a pattern (`example.org:8000`, `10.0.0.5:*`).
    """
    bound = [] if server.host in LOOPBACK_NAMES else _machine_names() if server.host in WILDCARDS else [server.host]
    hosts = list(LOOPBACK_HOSTS)
    for name in [*bound, *server.allowed_hosts]:
        hosts += [pattern for pattern in _host_patterns(name) if pattern not in hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        # A web app allowed CORS must pass the Origin check too (server/host_check.py `Cors`).
        allowed_origins=LOOPBACK_ORIGINS + server.allowed_origins + server.cors_origins,
    )


def _host_patterns(name: str) -> list[str]:
    """Host header values for `name` with any port (or as given, when it already names a port)."""
    if name.endswith(":*") or re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):\d+", name):
        return [name]
    if ":" in name and not name.startswith("["):
        name = f"[{name.split('%')[0]}]"  # a bare IPv6 address (its zone id is never in a Host header)
    return [name, f"{name}:*"]


def shared_session_parts(config: VmcpConfig, replica: str) -> SharedSessionParts | None:
    """What `sessions.store: redis` adds to the transport; None in memory mode, where neither
    vmcp_opt/server/shared_sessions.py nor redis is imported."""
    if config.sessions.store != "redis":
        return None
    from vmcp_opt.server.shared_sessions import redis_session_parts

    return redis_session_parts(config, replica)


def _machine_names() -> list[str]:
    """Every name and address this machine answers to, for a wildcard bind."""
    import psutil  # only for a wildcard bind: not on every start's path

    names = {socket.gethostname(), socket.getfqdn()}
    for addresses in psutil.net_if_addrs().values():
        names.update(a.address for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6))
    return sorted(name for name in names if name)


def create_app(gateway: Gateway) -> Starlette:
    server_config, limits = gateway.config.server, gateway.config.limits
    mcp_server = build_mcp_server(gateway, "http")
    mcp_server.middleware.append(hold_session_slot)
    # Outermost: a request waiting anywhere (start-up included) holds its caller's slot.
    held = HeldAnswers(limits.held_answer_bytes)  # what clients leave unread (server/held_answers.py)
    streams = stream_budget(limits)  # GET and listen streams held per caller
    in_flight = RequestsInFlight(limits.requests_in_flight, Admission("http"), held, streams)
    mcp_server.middleware.insert(0, in_flight)
    throttle_sdk_refusals()
    security = transport_security(server_config)
    if server_config.cors_origins:
        logger.info(
            "CORS: browser pages from %s may call %s", ", ".join(server_config.cors_origins), server_config.path
        )
    replica = replica_id(server_config)
    shared = shared_session_parts(gateway.config, replica)  # None unless sessions.store is redis
    # JSON answers unless a call streams something first (server/lazy_stream.py).
    manager = LazyStreamSessionManager(
        app=mcp_server,
        security_settings=security,
        max_request_body_size=server_config.max_body_bytes,
        # SSE streams can be resumed with Last-Event-ID (polling, dropped connections); bounded, in memory or
        # (sessions.store: redis) in Redis, on any replica.
        event_store=shared.events if shared is not None else memory_event_store(gateway.config.sessions),
        retry_interval=SSE_RETRY_MS,
        max_sessions=limits.max_sessions,
        session_idle_timeout=limits.session_idle_timeout,
    )
    slots = SessionSlots(limits.max_sessions, limits.max_sessions_per_address, limits.sessions_per_caller())
    # Refusals before a session serves a request (another principal's session, a session limit): audited, counted.
    manager.refused = refused = gateway.telemetry.session_refused
    # Inside authentication (`authenticated` below): it counts a verified caller's sessions and streams by subject.
    session_gate = SessionGate(
        StreamableHTTPASGIApp(manager),
        slots,
        retry_after=min(limits.session_idle_timeout, 60),
        refused=refused,
        streams=streams,
    )
    shared_sessions = None
    if shared is not None:
        shared.refused = refused
        shared_sessions = session_gate.app = shared.front(
            manager, session_gate, gateway.sessions.owners, gateway.router
        )
        mcp_server.middleware.append(shared_sessions.record)
    sessions: ASGIApp = session_gate
    if gateway.limiter is not None:
        sessions = RateLimitGate(
            sessions,
            gateway.limiter,
            server_config.max_body_bytes,
            refused=gateway.telemetry.rate_limited,
            may_call=gateway.router.may_call,  # a call the policy refuses takes no tool's tokens
        )
    drain = Drain(sessions, server_config.max_body_bytes)
    if (metrics := gateway.telemetry.metrics) is not None:
        metrics.state.sessions = lambda: slots.total
        metrics.state.requests_in_flight = in_flight.__len__
        metrics.state.held_answer_bytes = held.__len__
        metrics.state.streams_open = streams.__len__

    endpoint, auth_routes = authenticated(
        JsonRpcErrorCodes(drain, server_config.max_body_bytes, gateway.config.limits.max_request_values),
        gateway.config,
        gateway.telemetry,
    )
    diagnostics = diagnostics_listener(gateway, endpoint, drain)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as task_group:
            try:
                await gateway.start(task_group)
            except StartupError as exc:  # failure.mode: fail, already logged naming the backends
                # Raised out of the lifespan, uvicorn would print its traceback and exit 3; this stops it as
                # `gateway.fatal` does (exit 1, a failure a restart may get past).
                gateway.fatal = exc
                if gateway.on_fatal is not None:
                    gateway.on_fatal(exc)
                yield  # uvicorn then stops at once, without serving
                task_group.cancel_scope.cancel()
                return
            if diagnostics is not None:
                task_group.start_soon(diagnostics.run_beside, name="diagnostics")
            async with manager.run(), shared_sessions.run() if shared_sessions else contextlib.nullcontext():
                yield
            if diagnostics is not None:
                diagnostics.should_exit = True
            gateway.stop()
            if isinstance(endpoint, RequireAuthentication):
                await endpoint.aclose()  # the token introspection client's connections

    app = Starlette(
        routes=[
            Route(server_config.path, endpoint=endpoint),
            *health_routes(gateway, endpoint, drain),
            *(metrics_routes(gateway, endpoint) if diagnostics is None else []),
            *auth_routes,
        ],
        lifespan=lifespan,
        # Every route, /healthz and /readyz too, answers only requests that name this gateway.
        middleware=[
            Middleware(ReplicaHeader, replica=replica),
            Middleware(HostCheck, allowed_hosts=security.allowed_hosts, allowed_origins=security.allowed_origins),
            # Inside the Host/Origin check and outside authentication: preflights carry no credential.
            *([Middleware(Cors, origins=server_config.cors_origins)] if server_config.cors_origins else []),
        ],
    )
    app.state.drain = drain  # the runner begins it on SIGTERM (server/runner.py)
    return app


def diagnostics_listener(
    gateway: Gateway, endpoint: ASGIApp | None, drain: Drain | None = None
) -> DiagnosticsServer | None:
    """The `telemetry.metrics.listen` server, if configured, with a Host check of its own (it may be bound to
    another address than `/mcp`). Raises `ListenError` when its address cannot be bound."""
    address = gateway.config.telemetry.metrics.address()
    if address is None:
        return None
    security = transport_security(gateway.config.server.model_copy(update={"host": address[0]}))
    return diagnostics_server(gateway, endpoint, security, drain)


def authenticated(
    endpoint: ASGIApp, config: VmcpConfig, telemetry: Telemetry | None = None
) -> tuple[ASGIApp, list[BaseRoute]]:
    """The MCP endpoint behind the configured authentication, and the routes that describe it (RFC 9728)."""
    incoming = config.auth.incoming
    counted = partial(telemetry.authenticated, incoming.mode) if telemetry is not None else None
    authenticator = build_authenticator(config)  # AuthSetupError stops the start
    if authenticator is None:
        if config.server.host not in LOOPBACK_ADDRESSES:
            logger.warning(
                "auth: serving WITHOUT authentication on %s (auth.incoming.allow_anonymous_remote): anyone who can "
                "reach this port can list and call every tool",
                config.server.host,
            )
        return endpoint, []
    metadata_url: str | None = None
    routes: list[BaseRoute] = []
    if incoming.mode == "oauth":
        oauth = incoming.oauth
        assert oauth.issuer is not None
        resource = config.resource_uri()
        metadata: dict[str, Any] = {
            "resource": resource,
            # Exactly the issuer identifier (a URL type would add a trailing slash clients then reject).
            "authorization_servers": [oauth.issuer],
            "bearer_methods_supported": ["header"],
            "resource_name": "vmcp-opt",
        }
        scopes = oauth.scopes_supported or oauth.required_scopes
        if scopes:
            metadata["scopes_supported"] = scopes

        async def protected_resource(request: Request) -> JSONResponse:
            return JSONResponse(metadata, headers={"Cache-Control": "public, max-age=3600"})

        # RFC 9728 puts the document under the resource's path; clients of older drafts look at the root too.
        metadata_url = str(build_resource_metadata_url(AnyHttpUrl(resource)))
        well_known = {urlsplit(metadata_url).path, "/.well-known/oauth-protected-resource"}
        routes = [Route(path, protected_resource, methods=["GET"]) for path in sorted(well_known)]
        logger.info("auth: OAuth resource %s, tokens from %s", resource, oauth.issuer)
    return RequireAuthentication(endpoint, authenticator, metadata_url, required_scopes(config), counted), routes
