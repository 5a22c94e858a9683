"""`/healthz`, `/readyz` and `/metrics`: on the main listener, or on a diagnostics listener of their own.

With `telemetry.metrics.listen`, a second uvicorn server in the gateway's event loop serves the three routes
on that address (loopback unless a host is named), and the main listener serves no `/metrics`: scrapers
need not reach the MCP port, and the MCP port need not expose metrics. The main listener keeps `/healthz`
and `/readyz` either way (load balancers probe it there). A stdio gateway has no other listener: this is
how its metrics are read. With authentication on, the main listener's `/metrics` answers a non-loopback
caller without a credential that verifies 401, as its `/readyz` keeps the detail from them. The diagnostics
listener has the main one's connection limits and log handling (server/uvicorn_config.py).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Iterator

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Scope

from vmcp_opt.config import LOOPBACK_ADDRESSES
from vmcp_opt.gateway import Gateway
from vmcp_opt.server.authentication import RequireAuthentication
from vmcp_opt.server.drain import Drain
from vmcp_opt.server.host_check import HostCheck
from vmcp_opt.server.uvicorn_config import listener_settings
from vmcp_opt.shared.secrets import redis_users
from vmcp_opt.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

logger = logging.getLogger(__name__)


def health_routes(gateway: Gateway, endpoint: ASGIApp | None, drain: Drain | None = None) -> list[Route]:
    """`/healthz` (the process answers) and `/readyz` (the backends are up and the gateway is not draining;
    detail only to those who may see it; `degraded` while a Redis the config uses is unreachable or refuses the
    password, or while replicas sharing sessions serve different catalogues, shared/replica_shapes.py).
    `endpoint` is the MCP endpoint over HTTP, whose authentication decides who may: a verified caller only
    while no authorization policy is configured (else one it hides a backend from would read that backend's
    name and errors, which carry hostnames, URLs and paths), loopback always. Anyone else gets the status word
    and the status code, all a probe reads."""
    # With a policy, the detail is loopback's (an operator on the host, `kubectl port-forward`/`exec`) alone.
    detail_endpoint = None if gateway.config.auth.authorization.policies is not None else endpoint

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        if drain is not None and drain.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        readiness = gateway.readiness()
        body = readiness.body
        if redis_users(gateway.config):  # Redis's state and why not reachable; redis imported only when used
            from vmcp_opt.shared.redis_client import with_redis_state

            body = await with_redis_state(gateway.config, body)
        if gateway.config.sessions.store == "redis":  # replicas share sessions: do they serve one catalogue?
            from vmcp_opt.shared.replica_shapes import with_shapes_state

            body = with_shapes_state(gateway.config, body)
        if not await may_see_detail(request.scope, detail_endpoint):
            body = {"status": body["status"]}  # backend names, errors and URLs only to those who may see them
        return JSONResponse(body, status_code=200 if readiness.serving else 503)

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]


def metrics_routes(gateway: Gateway, endpoint: ASGIApp | None = None) -> list[Route]:
    """`/metrics` when metrics are on. On the main listener (`endpoint` given) with authentication on, only to
    those `/readyz` shows its detail: loopback, or (with no policy) a credential that verifies (backend names, health and
    auth-failure counts are not for anyone who reaches the port). Open on the diagnostics listener, which is
    loopback unless `telemetry.metrics.listen` names a host (then a warning says it is open)."""
    metrics = gateway.telemetry.metrics
    if metrics is None:
        return []
    guarded = isinstance(endpoint, RequireAuthentication)
    # Under a policy, as `/readyz`'s detail: its backend names and health are not filtered by a caller's view.
    policed = gateway.config.auth.authorization.policies is not None
    refusal = (
        "/metrics on the MCP port is loopback's alone under an authorization policy; scrape telemetry.metrics.listen"
        if policed
        else "/metrics needs a credential from a non-loopback address"
    )

    async def exposition(request: Request) -> Response:
        if guarded and not await may_see_detail(request.scope, None if policed else endpoint):
            return JSONResponse({"error": refusal}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    return [Route("/metrics", exposition, methods=["GET"])]


async def may_see_detail(scope: Scope, endpoint: ASGIApp | None) -> bool:
    """A loopback client, or (with authentication on) one whose credential verifies. A request that came with
    a forwarding header is never taken for loopback: behind `server.trusted_proxies` the client address is the
    one the header claims, and a client inside a trusted range could claim `127.0.0.1`. A credential checked
    here is counted, and its refusal logged and audited, as on `/mcp`: the answer differs for a good one, so
    these routes are somewhere to try keys."""
    client = scope.get("client")
    forwarded = any(name in (b"x-forwarded-for", b"forwarded") for name, _ in scope["headers"])
    with contextlib.suppress(ValueError):
        if client and not forwarded and ipaddress.ip_address(client[0]).is_loopback:
            return True
    if isinstance(endpoint, RequireAuthentication):
        return await endpoint.verifies(scope)
    return False


class ListenError(Exception):
    """The diagnostics listener's address cannot be bound (in use, not an address of this machine).

    `exit_status` is `vmcp serve`'s, as for the main listener (cli_serve.py): 2 when the address is not this
    machine's, a config error no restart fixes; 1 otherwise (the port held by another process, a name that
    does not resolve yet), which may pass, so a supervisor should restart."""

    def __init__(self, message: str, *, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class DiagnosticsServer(uvicorn.Server):
    """The diagnostics listener: a uvicorn server run as a task beside the main one, on a socket bound before
    either starts (so a bad address stops the start with its reason). Signals stay the main server's, which
    stops this one through `should_exit`."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        super().__init__(config)
        self.socket = sock

    async def run_beside(self) -> None:
        await self.serve(sockets=[self.socket])

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def diagnostics_server(
    gateway: Gateway, endpoint: ASGIApp | None, security: TransportSecuritySettings, drain: Drain | None = None
) -> DiagnosticsServer:
    """The server for `telemetry.metrics.listen` (the caller checked it is set), behind the Host/Origin check
    `security` (as the main listener's, for the address it binds)."""
    address = gateway.config.telemetry.metrics.address()
    assert address is not None
    host, port = address
    sock = _bound(host, port)  # before the warning: an address that cannot be bound is only an error
    if host not in LOOPBACK_ADDRESSES:
        logger.warning(
            "telemetry.metrics.listen: /metrics and /readyz on %s:%d are readable by anyone who can reach it",
            host,
            port,
        )
    app = Starlette(
        routes=[*health_routes(gateway, endpoint, drain), *metrics_routes(gateway)],
        middleware=[
            Middleware(HostCheck, allowed_hosts=security.allowed_hosts, allowed_origins=security.allowed_origins)
        ],
    )
    # The MCP port's connection limits and log handling: this port, too, is somewhere to hold sockets open.
    settings = listener_settings(gateway.config)
    return DiagnosticsServer(uvicorn.Config(app, host=host, port=port, lifespan="off", **settings), sock)


def _bound(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenError(f"telemetry.metrics.listen {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds its own
        sock.bind(address)
        sock.listen(128)  # connections wait in the backlog until the server's loop takes them, none refused
    except OSError as exc:
        sock.close()
        status = 2 if exc.errno == errno.EADDRNOTAVAIL else 1
        raise ListenError(
            f"telemetry.metrics.listen {host}:{port}: {exc.strerror or exc}", exit_status=status
        ) from None
    return sock
