"""The streamable-HTTP endpoint (`/mcp`) with `/healthz` and `/readyz`, on Starlette and uvicorn."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anyio
import psutil
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Scope

from vmcp_opt.auth.authenticators import build_authenticator
from vmcp_opt.config import LOOPBACK_ADDRESSES, ServerConfig, VmcpConfig
from vmcp_opt.gateway import Gateway
from vmcp_opt.server.authentication import RequireAuthentication
from vmcp_opt.server.bad_input import JsonRpcErrorCodes
from vmcp_opt.server.event_store import BoundedEventStore
from vmcp_opt.server.handlers import build_mcp_server
from vmcp_opt.server.host_check import HostCheck
from vmcp_opt.server.sessions import SessionGate, SessionSlots, hold_session_slot, throttle_sdk_refusals
from vmcp_opt.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from vmcp_opt.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

# How long a client waits before reconnecting to a stream the gateway closed (milliseconds).
SSE_RETRY_MS = 1000
LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


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
        allowed_origins=LOOPBACK_ORIGINS + server.allowed_origins,
    )


def _host_patterns(name: str) -> list[str]:
    """Host header values for `name` with any port (or as given, when it already names a port)."""
    if name.endswith(":*") or re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):\d+", name):
        return [name]
    if ":" in name and not name.startswith("["):
        name = f"[{name.split('%')[0]}]"  # a bare IPv6 address (its zone id is never in a Host header)
    return [name, f"{name}:*"]


def _machine_names() -> list[str]:
    """Every name and address this machine answers to, for a wildcard bind."""
    names = {socket.gethostname(), socket.getfqdn()}
    for addresses in psutil.net_if_addrs().values():
        names.update(a.address for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6))
    return sorted(name for name in names if name)


def create_app(gateway: Gateway) -> Starlette:
    server_config, limits = gateway.config.server, gateway.config.limits
    mcp_server = build_mcp_server(gateway, "http")
    mcp_server.middleware.append(hold_session_slot)
    throttle_sdk_refusals()
    security = transport_security(server_config)
    manager = StreamableHTTPSessionManager(
        app=mcp_server,
        security_settings=security,
        max_request_body_size=server_config.max_body_bytes,
        # SSE streams can be resumed with Last-Event-ID (polling, dropped connections); bounded, in memory.
        event_store=BoundedEventStore(),
        retry_interval=SSE_RETRY_MS,
        max_sessions=limits.max_sessions,
        session_idle_timeout=limits.session_idle_timeout,
    )
    slots = SessionSlots(limits.max_sessions, limits.max_sessions_per_address)
    sessions = SessionGate(StreamableHTTPASGIApp(manager), slots, retry_after=min(limits.session_idle_timeout, 60))
    if gateway.telemetry.metrics is not None:
        gateway.telemetry.metrics.state.sessions = lambda: slots.total

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as task_group:
            await gateway.start(task_group)
            async with manager.run():
                yield
            gateway.stop()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        readiness = gateway.readiness()
        body = readiness.body
        if not await may_see_detail(request.scope, endpoint):
            body = {"status": body["status"]}  # backend names, errors and URLs only to loopback or authenticated
        return JSONResponse(body, status_code=200 if readiness.serving else 503)

    async def metrics(request: Request) -> Response:
        assert gateway.telemetry.metrics is not None
        return Response(gateway.telemetry.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    metrics_routes = [Route("/metrics", metrics, methods=["GET"])] if gateway.telemetry.metrics is not None else []
    endpoint, auth_routes = authenticated(
        JsonRpcErrorCodes(sessions, server_config.max_body_bytes), gateway.config, gateway.telemetry.metrics
    )
    return Starlette(
        routes=[
            Route(server_config.path, endpoint=endpoint),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *metrics_routes,
            *auth_routes,
        ],
        lifespan=lifespan,
        # Every route, /healthz and /readyz too, answers only requests that name this gateway.
        middleware=[
            Middleware(HostCheck, allowed_hosts=security.allowed_hosts, allowed_origins=security.allowed_origins)
        ],
    )


async def may_see_detail(scope: Scope, endpoint: ASGIApp) -> bool:
    """A loopback client, or (with authentication on) one whose credential verifies."""
    client = scope.get("client")
    with contextlib.suppress(ValueError):
        if client and ipaddress.ip_address(client[0]).is_loopback:
            return True
    if isinstance(endpoint, RequireAuthentication):
        return await endpoint.verifies(scope)
    return False


def authenticated(
    endpoint: ASGIApp, config: VmcpConfig, metrics: Metrics | None = None
) -> tuple[ASGIApp, list[BaseRoute]]:
    """The MCP endpoint behind the configured authentication, and the routes that describe it (RFC 9728)."""
    incoming = config.auth.incoming
    counted = partial(metrics.authenticated, incoming.mode) if metrics is not None else None
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
    required = incoming.oauth.required_scopes if incoming.mode == "oauth" else []
    return RequireAuthentication(endpoint, authenticator, metadata_url, required, counted), routes
