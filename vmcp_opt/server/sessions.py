"""MCP sessions bounded per caller and in total (issue 22, row 5), and GET streams per caller.

A POST without `mcp-session-id` (of the handshake era) may open a session. `SessionGate` takes a slot for
the caller before the SDK sees the request, or refuses it: 429 when that caller holds its share, 503 when
`limits.max_sessions` are open, both a JSON-RPC error with `Retry-After`. The gate runs inside authentication
(server/http.py), so it knows who asks: a verified subject's sessions count against
`limits.max_sessions_per_caller` wherever it connects from, an anonymous caller's against its address's
`limits.max_sessions_per_address`. Counted by address alone, one API key filled its address's share and every
other subject on that address (a NAT, a proxy, loopback) was refused; from several addresses it filled the total.

A GET (the session's event stream, or a resumed one) is held for as long as its client keeps it: each takes one of
the caller's `limits.max_streams_per_caller` for its life (`streams`, shared with 2026-07-28 listen streams:
server/in_flight.py), or is answered 429 with `Retry-After`; one caller held 181 of them through 181 sessions. The slot travels in the request's ASGI scope; `hold_session_slot`, a server middleware,
sees the request's first message reach the session's connection and ties the slot to that connection's
exit stack, so it is freed however the session ends (DELETE, idle timeout, crash, shutdown). A request
that opened no connection (refused, malformed) frees its slot when it is answered. A session whose client left
before its opening answer was written (`AnswerDelivery`) is ended at once (server/lazy_stream.py), and so frees
its slot: the SDK took that `200`, dropped by the server, for a session opened, held until its idle timeout.

The SDK's own `max_sessions` stays as a backstop; its per-refusal warning is throttled like ours, and so is its
warning per malformed notification a client sends, and per forged or stale `requestState` (`throttle_sdk_refusals`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from typing import Any

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmcp_opt.auth.caller import VERIFIED, address_key, subject_key
from vmcp_opt.auth.identity import SCOPE_KEY as IDENTITY_KEY
from vmcp_opt.auth.identity import Identity
from vmcp_opt.config.limits import LimitsConfig
from vmcp_opt.display import printable
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing.budget import Budget, LimitReached
from vmcp_opt.server.admission import SessionRefused, connection_of, tell_refused

logger = logging.getLogger(__name__)
_SLOT_KEY = "vmcp.session_slot"
_SESSION_HEADER = b"mcp-session-id"
_VERSION_HEADER = b"mcp-protocol-version"
SERVER_BUSY = -32000
SLOT_LIMITS = {  # `SessionSlots.take`'s reasons
    "address": "limits.max_sessions_per_address",
    "caller": "limits.max_sessions_per_caller",
    "total": "limits.max_sessions",
}
STREAMS_PER_CALLER = "limits.max_streams_per_caller"
# What a caller refused a stream is told to wait: a stream frees only when its client closes one.
STREAM_RETRY_AFTER = 5.0


def stream_budget(limits: LimitsConfig) -> Budget:
    """Streams held open per caller, GET event streams and listen streams together. Each holds a connection, so
    `limits.max_connections` bounds them all before any total of their own would."""
    return Budget(
        "open streams",
        total=limits.max_connections,
        per_caller=limits.max_streams_per_caller,
        retry_after=STREAM_RETRY_AFTER,
        total_setting="limits.max_connections",
        caller_setting=STREAMS_PER_CALLER,
    )


class Slot:
    """One session's place in the counts; `release` is idempotent."""

    def __init__(self, sessions: SessionSlots, address: str, caller: str | None = None) -> None:
        self._sessions = sessions
        self.address = address
        self.caller = caller  # the verified subject's key it counts against, else None: its address
        self.held = False  # a connection holds it: freed with the connection, not with the request
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._sessions._release(self.address, self.caller)

    async def aclose(self) -> None:
        self.release()


class SessionSlots:
    """Counts of open (or opening) sessions, per verified caller, per address (of anonymous callers), in total."""

    def __init__(self, max_total: int, max_per_address: int, max_per_caller: int | None = None) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.max_per_caller = max_per_address if max_per_caller is None else max_per_caller
        self.total = 0
        self._per_address: Counter[str] = Counter()
        self._per_caller: Counter[str] = Counter()

    def take(self, address: str, caller: str | None = None) -> Slot | str:
        """A slot, or why not: "address", "caller" or "total". `caller`, a verified subject's key (`verified_key`),
        is counted instead of the address: callers sharing an address do not share its bound."""
        if caller is None and self._per_address[address] >= self.max_per_address:
            return "address"
        if caller is not None and self._per_caller[caller] >= self.max_per_caller:
            return "caller"
        if self.total >= self.max_total:
            return "total"
        if caller is None:
            self._per_address[address] += 1
        else:
            self._per_caller[caller] += 1
        self.total += 1
        return Slot(self, address, caller)

    def of(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def _release(self, address: str, caller: str | None) -> None:
        self.total -= 1
        counts, key = (self._per_address, address) if caller is None else (self._per_caller, caller)
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]


class SessionGate:
    """ASGI: a slot per session-opening request, and one of `streams` per GET while it is held, or a 429/503
    JSON-RPC error with Retry-After."""

    def __init__(
        self,
        app: ASGIApp,
        slots: SessionSlots,
        retry_after: float,
        log_interval: float = 60.0,
        refused: SessionRefused | None = None,
        streams: Budget | None = None,
    ) -> None:
        self.app = app
        self.slots = slots
        self.streams = streams
        self.refused = refused  # hears of each refusal, with who asked (`Telemetry.session_refused`)
        self.retry_after = max(1, math.ceil(retry_after))
        self._log = ThrottledLog(logger, log_interval)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and self.streams is not None:
            await self._hold_stream(self.streams, scope, receive, send)
            return
        if scope["type"] != "http" or scope["method"] != "POST" or not may_open_session(scope):
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        slot = self.take(scope)
        if isinstance(slot, str):
            tell_refused(self.refused, scope, SLOT_LIMITS[slot])
            await self.refuse(slot, address, send)
            return
        scope[_SLOT_KEY] = slot
        try:
            await self.app(scope, receive, send)
        finally:
            if not slot.held:
                slot.release()

    def take(self, scope: Scope) -> Slot | str:
        """A session's slot for the request's caller, or why not (`SessionSlots.take`)."""
        return self.slots.take(client_address(scope), verified_key(scope))

    async def _hold_stream(self, streams: Budget, scope: Scope, receive: Receive, send: Send) -> None:
        """A GET holds one of its caller's streams until it is answered (its stream closed), or is refused."""
        key = caller_key_of(scope)
        try:
            streams.acquire(key)
        except LimitReached as refusal:
            status = 429 if refusal.setting == STREAMS_PER_CALLER else 503
            retry_after = max(1, math.ceil(streams.retry_after))
            await json_rpc_error(
                send,
                status,
                SERVER_BUSY,
                refusal.error.message,
                {"limit": refusal.setting, "retry_after": retry_after},
                [(b"retry-after", str(retry_after).encode())],
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            streams.release(key)

    async def refuse(self, why: str, address: str, send: Send) -> None:
        """Answers 429 (`why` "address" or "caller") or 503 ("total") with Retry-After."""
        if why == "caller":
            status, limit, setting = 429, self.slots.max_per_caller, SLOT_LIMITS["caller"]
            message = f"Too many open sessions for this caller ({limit}, {setting}); retry after {self.retry_after} s"
            self._log.warning(
                "sessions:caller",
                "sessions: refused a new session of a caller (from %s): it holds %d (%s)",
                printable(address),
                limit,
                setting,
            )
        elif why == "address":
            status, limit, setting = 429, self.slots.max_per_address, "limits.max_sessions_per_address"
            message = f"Too many open sessions from this address ({limit}, {setting}); retry after {self.retry_after} s"
            self._log.warning(
                "sessions:address",
                "sessions: refused a new session from %s: it holds %d (limits.max_sessions_per_address)",
                printable(address),
                limit,
            )
        else:
            status, limit, setting = 503, self.slots.max_total, "limits.max_sessions"
            message = f"Too many open sessions ({limit}, {setting}); retry after {self.retry_after} s"
            self._log.warning(
                "sessions:total", "sessions: refused a new session: %d are open (limits.max_sessions)", limit
            )
        await json_rpc_error(
            send,
            status,
            SERVER_BUSY,
            message,
            {"limit": setting, "retry_after": self.retry_after},
            [(b"retry-after", str(self.retry_after).encode())],
        )


async def hold_session_slot(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Server middleware: the opening request reached a session's connection; its slot now lives as long."""
    scope = getattr(ctx.request, "scope", None)
    slot = scope.get(_SLOT_KEY) if isinstance(scope, dict) else None
    if isinstance(slot, Slot) and not slot.held:
        slot.held = True
        connection_of(ctx).exit_stack.push_async_callback(slot.aclose)
    return await call_next(ctx)


async def json_rpc_error(
    send: Send,
    status: int,
    code: int,
    message: str,
    data: dict[str, Any] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    request_id: str | int | None = None,
) -> None:
    """An HTTP answer carrying a JSON-RPC error (to `request_id`, when the request's id is known)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


class AnswerDelivery:
    """A request's `receive` and `send`, watched: whether its client's connection ended before the answer's last
    bytes were handed to the server (`left_early`). Run `watch` beside the request and cancel it once answered.

    Once the body is read, `watch` waits in `receive` for the end of the connection, which uvicorn reports once
    the answer is complete as well: it counts only before that. The server drops an answer written after the
    client left, silently (uvicorn), so a client gone just as the answer is written may be counted as served."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._body_read = anyio.Event()
        self._answered = False
        self.left_early = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._left()
        elif not message.get("more_body", False):
            self._body_read.set()
        return message

    async def send(self, message: Message) -> None:
        await self._send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._answered = True

    async def watch(self) -> None:
        await self._body_read.wait()
        if (await self._receive())["type"] == "http.disconnect":
            self._left()

    def _left(self) -> None:
        if not self._answered:
            self.left_early = True


def client_address(scope: Scope) -> str:
    """The client's address: the peer's, or X-Forwarded-For's when the peer is in `server.trusted_proxies`
    (uvicorn sets it so only then: `proxy_headers`, `forwarded_allow_ips`)."""
    client = scope.get("client")
    return str(client[0]) if client else "?"


def verified_key(scope: Scope) -> str | None:
    """The verified subject authentication left in the scope, as rate limits and in-flight requests key it
    (`subject_key`); None for an anonymous caller."""
    identity = scope.get(IDENTITY_KEY)
    if isinstance(identity, Identity) and identity.method in VERIFIED and identity.subject:
        return subject_key(identity.method, identity.subject)
    return None


def caller_key_of(scope: Scope) -> str:
    """The request's caller as `Admission.budget_key` keys it: its verified subject, else its address."""
    return verified_key(scope) or address_key(client_address(scope))


def may_open_session(scope: Scope) -> bool:
    """The SDK's own test: no session id, and a handshake-era (or absent) protocol version header."""
    version: bytes | None = None
    for name, value in scope["headers"]:
        if name == _SESSION_HEADER:
            return False
        if name == _VERSION_HEADER:
            version = value
    return version is None or version.decode("latin-1") in HANDSHAKE_PROTOCOL_VERSIONS


class ThrottleRecords(logging.Filter):
    """Lets through one record per interval of those whose message starts with `prefix`; counts the rest."""

    def __init__(self, prefix: str, interval: float = 60.0) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval = interval
        self._last: float | None = None
        self._held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            self._held_back += 1
            return False
        self._last = now
        if self._held_back:
            record.msg = f"{record.msg} (and {self._held_back} more like it in the last {self.interval:g}s)"
            self._held_back = 0
        return True


# What the SDK warns about once per thing a client sent, by logger: the message templates to throttle.
_SDK_REFUSALS = {
    "mcp.server.streamable_http_manager": "Refusing to open a new session",
    # A notification whose params do not validate (`notifications/cancelled` with an object for `requestId`,
    # `notifications/progress` without a token): one warning per POST, as fast as a client can send them.
    "mcp.server.runner": "dropped %r: malformed params",
    # A 2026-07-28 request whose `requestState` does not unseal (forged, expired, another caller's): one warning
    # per request, at any `--log-level`, and no rate limit holds prompts/get or resources/read.
    "mcp.server.request_state": "requestState rejected on",
}


def throttle_sdk_refusals() -> None:
    """The SDK logs a warning per refused session, per malformed notification and per refused `requestState`;
    one a minute of each is enough (the next one let through counts those held back)."""
    for name, prefix in _SDK_REFUSALS.items():
        sdk = logging.getLogger(name)
        if not any(isinstance(f, ThrottleRecords) and f.prefix == prefix for f in sdk.filters):
            sdk.addFilter(ThrottleRecords(prefix))
