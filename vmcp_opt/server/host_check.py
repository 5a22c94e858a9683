"""Host and Origin checks on every route (DNS-rebinding protection), with strict host:port parsing.

The SDK checks only `/mcp`, and its `name:*` pattern matches any text after the colon
(`127.0.0.1:evil.example.com`). Here a Host header must be a name or address, optionally followed by a
port of digits, and an Origin a scheme, such a host and an optional port, before either is compared with
the patterns `transport_security` builds (`name`, `name:*`, `name:port`). A refusal is 421 (Host) or 403
(Origin), as the SDK answers; the refused value reaches the log escaped and shortened, at most once a
minute per kind.

`Cors` (only with `server.cors_origins`) runs inside that check: it lets the browser pages of those origins,
which the Origin check accepts too, read the answers.
"""

from __future__ import annotations

import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmcp_opt.display import shorten
from vmcp_opt.logs import ThrottledLog

logger = logging.getLogger(__name__)

_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?")
_ORIGIN = re.compile(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?")


def host_allowed(host: str, patterns: list[str]) -> bool:
    """`host` (a Host header) is `name[:digits]` and matches `name`, `name:*` or `name:port` of `patterns`."""
    match = _HOST.fullmatch(host)
    if match is None:
        return False
    name, port = match.group(1).lower(), match.group(2)
    return _matches(name, port, patterns)


def origin_allowed(origin: str, patterns: list[str]) -> bool:
    """`origin` is `scheme://name[:digits]` and matches `scheme://name`, `…:*` or `…:port` of `patterns`."""
    match = _ORIGIN.fullmatch(origin)
    if match is None:
        return False
    scheme, name, port = match.group(1).lower(), match.group(2).lower(), match.group(3)
    return _matches(f"{scheme}://{name}", port, patterns)


def _matches(name: str, port: str | None, patterns: list[str]) -> bool:
    for pattern in patterns:
        pattern = pattern.lower()
        if port is None and pattern == name:
            return True
        if port is not None and (pattern == f"{name}:*" or pattern == f"{name}:{port}"):
            return True
    return False


class HostCheck:
    """ASGI: every HTTP request's Host (required) and Origin (when sent) must name this gateway."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str], allowed_origins: list[str]) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins
        self._log = ThrottledLog(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [v for k, v in scope["headers"] if k == b"host"]
        origins = [v for k, v in scope["headers"] if k == b"origin"]
        host = hosts[0].decode("latin-1") if len(hosts) == 1 else ""
        if not (host_allowed(host, self.allowed_hosts) or _hostless_http10(scope, hosts)):
            self._log.warning(
                "host",
                "refused a request for Host '%s' (not this gateway's: %s)",
                shorten(host),
                HOST_FIX,
            )
            await _refuse(send, 421, f"Invalid Host header: {HOST_FIX}".encode())
            return
        if origins:
            origin = origins[0].decode("latin-1") if len(origins) == 1 else ""
            if not origin_allowed(origin, self.allowed_origins):
                self._log.warning(
                    "origin", "refused a request from Origin '%s' (not allowed: %s)", shorten(origin), ORIGIN_FIX
                )
                await _refuse(send, 403, f"Invalid Origin header: {ORIGIN_FIX}".encode())
                return
        await self.app(scope, receive, send)


# What the refusals say, so whoever reaches the gateway by another name (a proxy, DNS) finds the setting.
HOST_FIX = "a name the gateway is reached by must be in server.allowed_hosts (or `vmcp serve --allow-host NAME`)"
ORIGIN_FIX = "a browser page's origin must be in server.allowed_origins or server.cors_origins"


def _hostless_http10(scope: Scope, hosts: list[bytes]) -> bool:
    """An HTTP/1.0 request without a Host header, as load-balancer health checks send (HAProxy's `option
    httpchk`). HTTP/1.0 does not require the header; a browser always sends it, so a request without it cannot
    be a DNS-rebinding page's, and refusing it protects nothing. `/mcp` still needs a Host (the SDK's check)."""
    return not hosts and scope.get("http_version") == "1.0"


async def _refuse(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# What a browser page may send and read cross-origin. Request headers: the credential, the JSON body's type, the
# session and protocol headers of both eras (the 2026-07-28 client adds Mcp-Method and Mcp-Name, and an
# `Mcp-Param-<name>` for each tool argument a schema marks `x-mcp-header`, echoed by prefix), and the SSE resume
# header. Response headers: the session id and version a client sends back, the auth challenge, and when to retry.
CORS_METHODS = b"GET, POST, DELETE, OPTIONS"
CORS_REQUEST_HEADERS = (
    "Authorization, Content-Type, Accept, Mcp-Session-Id, Mcp-Protocol-Version, Mcp-Method, Mcp-Name, Last-Event-ID"
)
CORS_PARAM_PREFIX = "mcp-param-"
CORS_EXPOSED = b"Mcp-Session-Id, Mcp-Protocol-Version, WWW-Authenticate, Retry-After"
# Seconds a browser may reuse a preflight's answer (Chrome caps it at 7200): a changed `cors_origins` shows soon.
CORS_MAX_AGE = b"600"


class Cors:
    """ASGI, inside `HostCheck`: CORS for the web apps of `server.cors_origins`.

    Every Origin reaching this has passed the Origin check (an origin refused there got 403 and no CORS
    header), and `transport_security` puts the CORS origins among the Origin check's, so this only decides
    which of the accepted origins a browser may let read the answers. For those, a preflight (OPTIONS with
    `Access-Control-Request-Method`) is answered here, before authentication, since a browser sends it
    without the credential; other answers get `Access-Control-Allow-Origin` (the origin itself, never `*`)
    and the headers a client must read. No `Access-Control-Allow-Credentials`: callers authenticate with
    the Authorization header, never cookies. Every answer varies by Origin, for caches.
    """

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _header_values(scope)
        origins = headers.get(b"origin", [])
        origin = origins[0].decode("latin-1") if len(origins) == 1 else None
        allowed = origin is not None and origin_allowed(origin, self.origins)
        if scope["method"] == "OPTIONS" and origin is not None and b"access-control-request-method" in headers:
            await self._preflight(send, origin if allowed else None, headers)
            return
        extra: list[tuple[bytes, bytes]] = []
        if allowed and origin is not None:
            extra = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", CORS_EXPOSED),
            ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with_vary([*message.get("headers", []), *extra], b"Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, send: Send, origin: str | None, headers: dict[bytes, list[bytes]]) -> None:
        vary = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        if origin is None:  # accepted by the Origin check, but not a web app allowed to read answers
            await _refuse(send, 403, b"Origin not allowed for cross-origin requests (server.cors_origins)")
            return
        requested = b",".join(headers.get(b"access-control-request-headers", [])).decode("latin-1")
        params = [h.strip() for h in requested.split(",") if h.strip().lower().startswith(CORS_PARAM_PREFIX)]
        answer = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", CORS_METHODS),
            (b"access-control-allow-headers", ", ".join([CORS_REQUEST_HEADERS, *params]).encode("latin-1")),
            (b"access-control-max-age", CORS_MAX_AGE),
            (b"vary", vary),
            (b"content-length", b"0"),
        ]
        if b"access-control-request-private-network" in headers:  # Chrome, for a gateway on a private address
            answer.append((b"access-control-allow-private-network", b"true"))
        await send({"type": "http.response.start", "status": 204, "headers": answer})
        await send({"type": "http.response.body", "body": b""})


def _header_values(scope: Scope) -> dict[bytes, list[bytes]]:
    values: dict[bytes, list[bytes]] = {}
    for name, value in scope["headers"]:
        values.setdefault(name.lower(), []).append(value)
    return values


def _with_vary(headers: list[tuple[bytes, bytes]], name: bytes) -> list[tuple[bytes, bytes]]:
    """`headers` with `name` in its Vary header (added to one already there, as the SDK or a route may set)."""
    for i, (key, value) in enumerate(headers):
        if key.lower() == b"vary":
            if name.lower() not in [part.strip().lower() for part in value.split(b",")]:
                headers[i] = (key, value + b", " + name)
            return headers
    return [*headers, (b"vary", name)]
