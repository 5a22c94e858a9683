"""Host and Origin checks on every route (DNS-rebinding protection), with strict host:port parsing.

The SDK checks only `/mcp`, and its `name:*` pattern matches any text after the colon
(`127.0.0.1:evil.example.com`). Here a Host header must be a name or address, optionally followed by a
port of digits, and an Origin a scheme, such a host and an optional port, before either is compared with
the patterns `transport_security` builds (`name`, `name:*`, `name:port`). A refusal is 421 (Host) or 403
(Origin), as the SDK answers; the refused value reaches the log escaped and shortened, at most once a
minute per kind.
"""

from __future__ import annotations

import logging
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from vmcp_opt.display import shorten
from vmcp_opt.routing.budget import ThrottledLog

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
            self._log.warning("host", "refused a request for Host '%s' (not this gateway's)", shorten(host))
            await _refuse(send, 421, b"Invalid Host header")
            return
        if origins:
            origin = origins[0].decode("latin-1") if len(origins) == 1 else ""
            if not origin_allowed(origin, self.allowed_origins):
                self._log.warning("origin", "refused a request from Origin '%s' (not allowed)", shorten(origin))
                await _refuse(send, 403, b"Invalid Origin header")
                return
        await self.app(scope, receive, send)


def _hostless_http10(scope: Scope, hosts: list[bytes]) -> bool:
    """An HTTP/1.0 request without a Host header, as load-balancer health checks send (HAProxy's `option
    httpchk`). HTTP/1.0 does not require the header; a browser always sends it, so a request without it cannot
    be a DNS-rebinding page's, and refusing it protects nothing. `/mcp` still needs a Host (the SDK's check)."""
    return not hosts and scope.get("http_version") == "1.0"


async def _refuse(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
