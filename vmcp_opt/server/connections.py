"""HTTP connection limits under uvicorn (issue 22, row 7): read timeouts, a connection cap, file descriptors.

uvicorn closes idle kept-alive connections (`timeout_keep_alive`) but has no deadline for a client that
connects and sends its headers slowly, or never, nor for a slow body; each such client holds a socket
(a file descriptor) forever. `LimitedProtocol` adds both deadlines: `limits.http_header_timeout` from
connecting, or from the first byte of a later request on the connection, to the end of the headers;
`limits.http_body_timeout` from there to the end of the body. A late connection is closed.

A request line and headers over `limits.max_header_bytes` are answered 431 and the connection closed:
httptools would otherwise hold a header of any length until the header deadline. The completed parts
(URL, each header) are counted exactly; bytes read while the headers are still incomplete are a backstop
for one header that never ends.

A connection past `limits.max_connections` is answered 503 and closed at once, so descriptors stay free
for the backends, the log and the clients already connected. At start the open-file limit is raised to
its hard limit and the cap lowered to fit under it.

Past the cap, `PROBE_HEADROOM` connections more may each ask one `GET`/`HEAD` of `PROBE_PATHS` (`/healthz`,
`/readyz`, `/metrics`): clients holding every connection (idle streams, slow calls) would otherwise have a liveness
probe answered 503 and the pod restarted though the gateway is healthy. So may a connection past its address's
share (`limits.max_connections_per_address`), from the same slots: the kubelet's probes often share an address with
client traffic (same-node SNAT, a hostNetwork ingress not in `server.trusted_proxies`), and 50 clients each holding a
GET stream and a kept-alive POST connection got them answered 429. Such a connection is judged once its request line
is read: another path or method gets the refusal it would have had (the address's 429, else the cap's 503); a probe
gets its answer and the connection is closed after it. Past the headroom, or once its address holds
`PROBE_SLOTS_PER_ADDRESS` of the slots (one address held all 8 idle, and the kubelet's probes got 503), a connection
is refused at once. Refused at once or once judged, the status is the same: the address's 429 when the connection is
over its address's share (that client's own doing: "close some first"), else the cap's 503.
The slots count neither toward the cap nor toward an address's share, and the header and body deadlines apply as to
any connection, so they are held only as long as a request's head takes. (The MCP listener has no `/metrics` with
`telemetry.metrics.listen` set: there its probe is answered 404, and the connection closed, as any probe's.)

A refused connection (503, 429, 431) is closed the way nginx's `lingering_close` does: the answer, then our
half of the connection (a FIN), then what the client still sends is read and dropped until it closes, for at
most `LINGER_SECONDS`. Closed at once, a socket with the client's request unread makes the kernel send a
reset, and the client's kernel drops the answer with it: an SDK client (httpx, which sends its headers and
body in two writes) saw a bare `ReadError` instead of the 503 and its Retry-After. At most `MAX_LINGERING`
linger at once, outside the connection counts; past it one is closed at once, as before. Under a low open-file
limit fewer do (an eighth of the descriptors left for clients), so the allowance does not cut the cap by a quarter.

A 431 for a request pipelined behind one still running waits for that one's answer: written at once it would land
in the middle of that answer, and after our FIN the answer itself could not be written (uvicorn logs a
`RuntimeError` with a traceback for each, and the client loses it).

An answer the client does not read is held by the transport (the bytes the kernel has no room for; uvicorn writes a
whole JSON answer at once, so its high-water mark bounds nothing), and with it the connection, for as long as the
client stays connected: 90 clients asking for 9 MB each and never reading held ~500 MB more, and ~250 MB in the
kernel. `server.write_timeout` is the deadline: while the transport holds unsent bytes and nothing more is to be
written for the moment (uvicorn waits for the buffer to drain, the answer is complete, or the connection is
closing), a client that drains none of them within it is reset (its unsent bytes dropped, in the kernel too).
Progress is bytes drained, not speed: a client that reads something within every deadline keeps its connection,
however slowly, as with nginx's `send_timeout`. A response still being streamed below the high-water mark is not
judged (its next writes would hide what was drained); once the stream pauses it is. While the transport holds them
(writing paused) the unsent bytes are charged to the caller of the connection's last request, so that one caller's,
and all callers', unread answers stay within `limits.held_answer_bytes` (server/held_answers.py); so are the answers
reserved for the response being sent, until it ends (server/reserved_answers.py).

`asyncio` reports a failing `accept()` (EMFILE: out of descriptors) through the loop's exception handler,
with a traceback each time; `throttle_accept_errors` makes that one line a minute.

Past ~450 lines on purpose: one protocol class whose counts (per address, in total, the probes past the cap),
deadlines and refusals act on the same connection states; split, each part would reach into the others' state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import struct
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from mcp_types import INVALID_REQUEST
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from vmcp_opt.logs import ThrottledLog
from vmcp_opt.server.held_answers import SCOPE_KEY, AnswerHold
from vmcp_opt.server.sessions import SERVER_BUSY

logger = logging.getLogger(__name__)
_log = ThrottledLog(logger)
# Descriptors kept for what is not a client connection: backends' pipes and sockets, logs, the index.
RESERVED_DESCRIPTORS = 128
# What a client owes while a deadline runs: its request headers, or its body.
Phase = Literal["headers", "body"]
# Seconds a refused connection is read (and its input dropped) after its answer, waiting for the client to close.
LINGER_SECONDS = 2.0
# Refused connections lingering at once, for every listener of the process: a flood of them holds this many
# descriptors more, not one per refused client (`fit_connections` keeps them free).
MAX_LINGERING = 256
# What `fit_connections` leaves of MAX_LINGERING under the process's open-file limit.
_max_lingering = MAX_LINGERING
_lingering: set[LimitedProtocol] = set()
# Connections past `limits.max_connections`, per listener, that may serve one probe of `PROBE_PATHS` each.
PROBE_HEADROOM = 8
# Of those, what one client address may hold: half, so an address holding its slots idle until the header deadline
# leaves the other half to the kubelet's probes from elsewhere (liveness, readiness and startup probes at once fit
# in 4), while probes that share an address with client traffic (same-node SNAT) still have as many.
PROBE_SLOTS_PER_ADDRESS = PROBE_HEADROOM // 2
PROBE_PATHS = frozenset({b"/healthz", b"/readyz", b"/metrics"})
_PROBE_METHODS = frozenset({b"GET", b"HEAD"})
# SO_LINGER on, 0 s: close() resets the connection and drops what the kernel still holds for the client.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def _closing_answer(
    status: str, text: str, setting: str, *, code: int = SERVER_BUSY, retry_after: int | None = None
) -> bytes:
    """A JSON-RPC error (id null: no request was read), so an MCP client shows `text`, not only the status."""
    error = {"code": code, "message": text, "data": {"limit": setting}}
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
    retry = f"retry-after: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"{retry}connection: close\r\n\r\n"
    )
    return head.encode() + body


_BUSY = _closing_answer(
    "503 Service Unavailable",
    "Too many open connections (limits.max_connections); retry in a moment",
    "limits.max_connections",
    retry_after=1,
)
_BUSY_ADDRESS = _closing_answer(
    "429 Too Many Requests",
    "Too many open connections from this address (limits.max_connections_per_address); close some first",
    "limits.max_connections_per_address",
    retry_after=1,
)


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and a connection cap (set by
    `limited_protocol`). httptools rather than h11: its C parser takes ~0.3 ms less per request than h11's
    pure-Python one (bench/README.md, "Fifth session")."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000
    max_connections_per_address: int = 100
    # Peers not counted per address: behind a trusted proxy every client's connection is the proxy's.
    uncounted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_header_bytes: int = 64 * 1024
    write_timeout: float = 30.0
    # This listener's connections past the cap admitted for one probe (`PROBE_HEADROOM`); its own set per
    # `limited_protocol` class, as `connections` is per listener.
    probes: ClassVar[set[LimitedProtocol]] = set()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: Phase | None = None
        self._head_bytes = 0  # of the current request's URL and completed headers
        self._unfinished_bytes = 0  # read while the current request's headers are incomplete
        self._refused = False  # answered 503, 429 or 431: the rest of what the client sent is not parsed
        self._linger: asyncio.TimerHandle | None = None
        self._deferred: bytes | None = None  # a refusal held until the request still running is answered
        self._write_deadline: asyncio.TimerHandle | None = None
        self._unsent_at_start = 0  # unsent bytes when the current write deadline began
        self._hold = AnswerHold()  # its unsent bytes, charged to its caller (server/held_answers.py)
        self._probe: Literal["pending", "admitted", "served"] | None = None  # past a cap: one probe, or nothing
        self._over_address = False  # past its address's share: a refusal is the 429, not the cap's 503

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        over_total = len(self.connections) - len(self.probes) > self.max_connections
        self._over_address = self._over_address_cap()
        if over_total or self._over_address:
            if len(self.probes) >= PROBE_HEADROOM or self._probe_slots_held() >= PROBE_SLOTS_PER_ADDRESS:
                self._refuse_past_cap(address=self._over_address)  # as `_judge_probe` would: the same status
                return
            self.probes.add(self)
            self._probe = "pending"  # judged by its request line (`_judge_probe`)
        self._arm("headers")  # a new connection: its first request's headers are due

    def _refuse_past_cap(self, *, address: bool) -> None:
        """The address's 429 (the client itself holds too many: "close some first"), else the cap's 503."""
        if not address:
            self._refuse_busy()
            return
        _log.warning(
            "connections-address",
            "refused a connection from %s: %d are open from it (limits.max_connections_per_address)",
            self.client[0] if self.client else "?",
            self.max_connections_per_address,
        )
        self._refuse(_BUSY_ADDRESS)

    def _refuse_busy(self) -> None:
        _log.warning("connections", "refused a connection: %d are open (limits.max_connections)", self.max_connections)
        self._refuse(_BUSY)

    def _judge_probe(self) -> None:
        """A connection past a cap, its request line read: one probe of `PROBE_PATHS` is served; anything else, or a
        second request, gets the refusal it was spared until now."""
        if self._refused:
            return
        if self._probe == "pending":
            path = self.url.partition(b"?")[0]
            if path in PROBE_PATHS and self.parser.get_method() in _PROBE_METHODS:
                self._probe = "admitted"
                return
        if self._probe != "admitted":
            self._refuse_past_cap(address=self._over_address)

    def _probe_slots_held(self) -> int:
        """The probe slots this connection's address holds. Counted from `probes` (at most `PROBE_HEADROOM`), so a
        slot is freed wherever it leaves that set: refused (`_refuse`), or closed (`connection_lost`: served, timed
        out, or the client gone). Trusted proxies are bound too: the slots are for probes, not for their traffic."""
        host = self._host()
        return sum(1 for other in self.probes if other._host() == host)

    def _host(self) -> str | None:
        return self.client[0] if self.client else None

    def _over_address_cap(self) -> bool:
        """Whether this connection's peer holds more than its share: without this one address could hold every
        connection of `max_connections` (slow calls, open streams), and `/healthz` itself would be refused."""
        host = self._host()
        if host is None:
            return False
        if self.uncounted:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                return False
            if any(address in network for network in self.uncounted):
                return False
        peers = (getattr(other, "client", None) for other in self.connections if other not in self.probes)
        same = sum(1 for peer in peers if peer and peer[0] == host)
        return same > self.max_connections_per_address

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._phase == "headers" and not self._refused:
            self._unfinished_bytes += len(data)
            if self._unfinished_bytes > self.max_header_bytes:
                self._refuse_head()

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._head_bytes = 0
        if self._phase is None:
            self._arm("headers")  # a later request on the connection begun (a new one keeps its first deadline)

    def on_url(self, url: bytes) -> None:
        if self._within_cap(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._probe == "pending":  # the request line is complete once a header is
            self._judge_probe()
        if self._within_cap(len(name) + len(value) + 4):  # ": " and CRLF
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._probe is not None:
            self._judge_probe()
        if self._refused:
            return
        self._unfinished_bytes = 0
        self.scope[SCOPE_KEY] = self._hold  # type: ignore[literal-required]  # for the request's caller to tag
        super().on_headers_complete()
        if self._probe == "admitted":
            self._probe = "served"  # a request after this one is refused
            if self.cycle is not None:
                self.cycle.keep_alive = False  # closed after its answer: a probe slot is not kept alive
        self._arm("body")  # disarmed at once by on_message_complete when there is none

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._disarm()  # between requests the keep-alive timeout holds; nothing of ours

    def _within_cap(self, size: int) -> bool:
        if self._refused:
            return False
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes:
            self._refuse_head()
            return False
        return True

    def _refuse_head(self) -> None:
        """431 and close; the parser's remaining callbacks for this connection do nothing."""
        _log.warning(
            "headers",
            "refused a request whose headers pass %d bytes (limits.max_header_bytes)",
            self.max_header_bytes,
        )
        text = f"Request line and headers over {self.max_header_bytes:,} bytes (limits.max_header_bytes)"
        self._refuse(
            _closing_answer(
                "431 Request Header Fields Too Large", text, "limits.max_header_bytes", code=INVALID_REQUEST
            )
        )

    def _refuse(self, answer: bytes) -> None:
        """Send `answer`, then linger (see the module's docstring) or, past `MAX_LINGERING`, close at once; after the
        answer of a request still running on the connection (pipelined), if one is."""
        self._refused = True
        self._disarm()
        if self._answering():
            self._deferred = answer  # sent by on_response_complete
            return
        transport = self.transport
        transport.write(answer)
        if len(_lingering) >= _max_lingering or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the client is gone already (ENOTCONN): nothing to linger for
            transport.close()
            return
        # No longer one of the connections the caps count: it serves nothing, and closes within LINGER_SECONDS.
        self.connections.discard(self)
        self.probes.discard(self)
        _lingering.add(self)
        self._linger = self.loop.call_later(LINGER_SECONDS, transport.close)

    def _answering(self) -> bool:
        """Whether a request read earlier on this connection is still to be answered (running, or queued)."""
        cycle = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete and not cycle.disconnected)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._hold.unreserve()  # its answers are written (in the unsent bytes) or dropped
        self._watch_unsent()  # an answer complete (and its connection maybe closing) with bytes still unsent
        if self._deferred is not None and not self._answering() and not self.transport.is_closing():
            answer, self._deferred = self._deferred, None
            self._refuse(answer)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._hold.unsent(self.transport.get_write_buffer_size())
        self._watch_unsent()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._hold.unsent(0)  # drained to the low-water mark: no longer held for a client that does not read
        self._watch_unsent()  # drained to the low-water mark: progress, a new deadline for what is left

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self._watch_unsent()  # closed: the connection stays until its unsent bytes are read

    def shutdown(self) -> None:
        super().shutdown()
        self._watch_unsent()

    def _watch_unsent(self) -> None:
        """A new write deadline from now while the transport holds unsent bytes (each caller marks progress, or a
        moment after which the buffer only drains); none when it holds none."""
        self._unwatch_unsent()
        unsent = self.transport.get_write_buffer_size()
        if unsent:
            self._unsent_at_start = unsent
            self._write_deadline = self.loop.call_later(self.write_timeout, self._check_unsent)

    def _unwatch_unsent(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _check_unsent(self) -> None:
        self._write_deadline = None
        unsent = self.transport.get_write_buffer_size()
        if not unsent:
            return
        if unsent < self._unsent_at_start or not self._only_draining():
            self._watch_unsent()
            return
        _log.warning(
            "slow:write",
            "reset a connection from %s whose client read nothing for %gs; %d bytes of its answer unsent "
            "(server.write_timeout)",
            self.client[0] if self.client else "?",
            self.write_timeout,
            unsent,
        )
        self._reset()

    def _only_draining(self) -> bool:
        """Whether nothing is written to the transport until its buffer drains: uvicorn waits for it (paused), the
        answer is complete, or the connection is closing. Then fewer unsent bytes is exactly what the client read."""
        cycle = self.cycle
        return self.flow.write_paused or self.transport.is_closing() or cycle is None or cycle.response_complete

    def _reset(self) -> None:
        """Close now, dropping the unsent bytes: ours (abort) and the kernel's (a reset, not an orderly close that
        would keep sending them to a client that does not read)."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already gone: abort alone
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._hold.closed()
        self._disarm()
        self._unwatch_unsent()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        _lingering.discard(self)
        self.probes.discard(self)
        super().connection_lost(exc)

    def _arm(self, phase: Phase) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        self._phase = phase
        timeout = self.header_timeout if phase == "headers" else self.body_timeout
        self._deadline = self.loop.call_later(timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = None

    def _too_slow(self) -> None:
        what: Phase = self._phase or "headers"
        self._deadline = None
        _log.warning(
            f"slow:{what}",
            "closed a connection slow to send its request %s (limits.http_%s_timeout)",
            what,
            "header" if what == "headers" else "body",
        )
        self.transport.close()


def limited_protocol(
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    max_header_bytes: int = 64 * 1024,
    max_connections_per_address: int = 100,
    uncounted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    write_timeout: float = LimitedProtocol.write_timeout,
) -> type[LimitedProtocol]:
    settings = {
        "write_timeout": write_timeout,
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "max_connections": max_connections,
        "max_header_bytes": max_header_bytes,
        "max_connections_per_address": max_connections_per_address,
        "uncounted": tuple(uncounted),
        "probes": set(),
    }
    return type("LimitedProtocol", (LimitedProtocol,), settings)


def fit_connections(max_connections: int) -> int:
    """Raise the open-file limit to its hard limit; the connection cap that fits under it."""
    try:
        import resource
    except ImportError:  # Windows
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    global _max_lingering
    budget = soft - RESERVED_DESCRIPTORS
    _max_lingering = max(1, min(MAX_LINGERING, budget // 8))
    fits = max(1, budget - _max_lingering)
    if fits < max_connections:
        logger.warning(
            "limits.max_connections lowered from %d to %d to fit the open-file limit (%d)", max_connections, fits, soft
        )
        return fits
    return max_connections


def throttle_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """A failing accept() (out of descriptors) logged once a minute, without its traceback."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept() out of system resource"):
            exc = context.get("exception")
            _log.warning("accept", "cannot accept connections: %s (out of file descriptors?)", exc)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
