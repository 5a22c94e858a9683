"""A streamable HTTP backend's JSON answers, read no further than `limits.max_result_bytes` allows.

The SDK's client reads a JSON response whole (`response.aread()`), then parses it on the event loop; its SSE
events it caps per event (`max_sse_event_size`, 1 MiB unless told). A backend could otherwise make the
gateway hold and parse any number of bytes. `cap_json_bodies` is an httpx response hook: it runs once the
headers are in and wraps a JSON body's stream in `CappedBody`, which stops at the cap (decoded bytes: a gzip
body is inflated here, in bounded steps, rather than by httpx) with `BodyTooLarge`. That is an
`httpx2.StreamError`, which the SDK turns into a JSON-RPC error for the waiting request at once. It also counts
the body's values chunk by chunk as it comes (backends/results.py, `ValueCounter`) and stops as soon as they pass
`limits.max_result_values` with `BodyTooManyValues`: the SDK parses and validates the body on the event loop. A
listing page's body (the POST's method, `LISTING_METHODS`) is held to a page's budget instead (`page_values`): its
items have budgets of their own (backends/listing.py), the rest of the page none. An SSE body is
read through `CountedEvents`, which counts each event's data so (and inflates it in bounded steps); the SDK turns
its refusal, as its own of an event past `max_sse_event_size`, into "SSE stream failed", which `as_internal_error`
makes the JSON path's refusal (it had opened the circuit for every caller).

The SDK reports it as a client's unparseable request would be (-32700 "Failed to parse JSON response: …")
and logs an ERROR with a traceback each time: a client calling such a tool in a loop would flood the log.
`QuietBodyTooLarge` makes those records one WARNING line per backend a minute, and `as_internal_error` gives
the caller -32603 with our message alone, as the stdio transport answers the same limit (for a tools/call, the
router makes either an error result the agent can read, as it does a parsed result over the cap).

An error status on a POST (a 500, a proxy's 502) the SDK answers with "Server returned an error response",
without the status. The same hook reads at most `ERROR_BODY_BYTES` of such a body: a JSON-RPC error (a
spec-correct server's answer at a non-2xx status) passes on as it came; anything else becomes a JSON-RPC
error saying "backend 'x' answered HTTP 500 Internal Server Error" and the start of the body (masked, one
line, `ERROR_BODY_SHOWN` characters; an HTML page not at all), with the status in its data, where the
circuit breaker reads it (a 5xx is a failure: backends/errors.py, `broken_answer`). Each is logged, at most
once per backend a minute. 401 and 403 are left to the credentials, 404 to the SDK (an ended session).

A JSON body the backend cuts off (the connection closed mid-answer) is `BodyBroken`, a `StreamError` too: the
SDK lets any other error out of a POST's task, which ended the whole session and every call in flight on it.

An answer nobody waits for any more is not read further: backends/open_answers.py.

A lone surrogate escape (`\\ud800`, valid JSON, no character) in a body or an SSE stream is rewritten to `\\ufffd` as
the bytes pass (`EscapeMender`, backends/lone_surrogates.py): the SDK parses with pydantic, which refused the whole
message ("a body that is not JSON-RPC"), so one odd character in a description failed the backend's listing, and in
a log message or progress text dropped the notification. Bodies without a `\\ud`/`\\uD` pay one search per chunk.

Just past ~450 lines: the JSON body cap and the SSE events' cap and value count share one counting stream and
one refusal (`OVER_RESULT_CAP`); the SSE part would otherwise repeat it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from http import HTTPStatus
from typing import NoReturn

import httpx2
import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from vmcp_opt.backends.errors import HTTP_STATUS, NOT_READ, OVER_RESULT_CAP, SDK_PARSE_PREFIX, one_line, unquoted
from vmcp_opt.backends.lone_surrogates import EscapeMender
from vmcp_opt.backends.results import LISTING_METHODS, ValueCounter, page_values, too_many_values
from vmcp_opt.backends.secrets import redact, with_escaped_forms
from vmcp_opt.config import SECRET_NAME
from vmcp_opt.logs import ThrottledLog

logger = logging.getLogger(__name__)
ERROR_BODY_BYTES = 64 * 1024  # what is read of an error status's body: a JSON-RPC error fits, a page is cut
ERROR_BODY_SHOWN = 200  # characters of such a body quoted in the error
_LEFT_TO_SDK = frozenset({401, 403, 404})  # the credentials' refusal (they observe it); an ended session
_status_log = ThrottledLog(logger)
SSE_TYPE = "text/event-stream"
_INFLATED = ("gzip", "deflate", "x-gzip")
_INFLATE_STEP = 64 * 1024  # bytes of an SSE stream inflated at a time
_SDK_LOGGER = "mcp.client.streamable_http"
_SDK_PREFIX = SDK_PARSE_PREFIX  # the SDK's message for a body it could not read
_NOT_READ = NOT_READ  # how `BodyTooLarge`'s message ends
# The SDK's message for a request whose SSE stream httpx2's `EventSource` ended at an event past its size cap.
_SSE_FAILED = "SSE stream failed: "  # the SDK's, for a request whose SSE stream raised an `SSEError`
_SSE_EVENT_TOO_LARGE = re.compile(_SSE_FAILED + r"Server-sent event exceeded the (\d+) byte limit\.?")
_LINE_END = re.compile(rb"\r\n?|\n")  # an SSE line's end
_DATA = b"data:"  # how a data line starts (one of just `data` holds nothing)


class BodyRefused(httpx2.StreamError):
    """A backend's answer not read to its end, for a reason the message gives naming the backend. A
    `StreamError`: the SDK answers the waiting request with it and the session goes on."""

    def __init__(self, backend: str, message: str) -> None:
        super().__init__(message)
        self.backend = backend


class BodyTooLarge(BodyRefused):
    """A backend's answer passed the cap; the message names the backend and the setting."""

    def __init__(self, backend: str, cap: int) -> None:
        super().__init__(
            backend,
            f"backend '{backend}' answered with more than {cap:,} bytes "
            f"(limits.max_result_bytes, with room for the envelope); {_NOT_READ}",
        )


class BodyTooManyValues(BodyRefused):
    """A backend's answer passed `limits.max_result_values` (`listing`: a listing page's budget, `page_values`); the
    message names the backend and the bound. `whole`: `counted` are all of its values, not those read so far."""

    def __init__(self, backend: str, most: int, counted: int, *, listing: bool = False, whole: bool = True) -> None:
        text = too_many_values(backend, counted, most, listing=listing, whole=whole)
        super().__init__(backend, f"{text}; {_NOT_READ}")


class BodyBroken(BodyRefused):
    """The connection failed while a JSON answer arrived (the backend closed it mid-answer)."""

    def __init__(self, backend: str, exc: httpx2.TransportError) -> None:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        super().__init__(backend, f"backend '{backend}' broke off its answer ({one_line(reason)})")


class AnswerAbandoned(BodyRefused):
    """A JSON answer no call waits for any more (it timed out or was cancelled): not read further."""

    def __init__(self, backend: str) -> None:
        super().__init__(backend, f"backend '{backend}': the call stopped waiting for this answer")


class StreamAbandoned(httpx2.SSEError):
    """An SSE answer no call waits for any more. An `SSEError`: the SDK ends that request's stream quietly,
    without trying to resume it."""


class QuietBodyTooLarge(logging.Filter):
    """On the SDK's logger: a record about a `BodyRefused` becomes one WARNING line per backend and interval,
    without the traceback (an `AnswerAbandoned` none: the call's timeout is logged already); every other record
    passes. (A filter, not `logs.ThrottledLog`: the SDK writes these records itself.)"""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held_back: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):  # pydantic's text quotes the body, which may echo a credential
            _status_log.warning("unparsable", "a backend answered with a body that is not JSON-RPC (not logged)")
            return False
        if not isinstance(exc, BodyRefused):
            return True
        if isinstance(exc, AnswerAbandoned):
            return False
        now, last = time.monotonic(), self._last.get(exc.backend)
        if last is not None and now - last < self.interval:
            self._held_back[exc.backend] += 1
            return False
        self._last[exc.backend] = now
        held = self._held_back.pop(exc.backend, 0)
        suffix = f" (and {held} more like it in the last {self.interval:g}s)" if held else ""
        logger.warning("%s%s", exc, suffix)
        return False


def quiet_body_too_large() -> None:
    """Installs `QuietBodyTooLarge` on the SDK's logger, once."""
    sdk = logging.getLogger(_SDK_LOGGER)
    if not any(isinstance(f, QuietBodyTooLarge) for f in sdk.filters):
        sdk.addFilter(QuietBodyTooLarge())


def as_internal_error(exc: MCPError) -> MCPError | None:
    """The SDK's -32700 for a body `CappedBody` refused, and its "SSE stream failed" for an SSE event past
    `max_sse_event_size`, as -32603 with our message alone, marked as an answer over the cap (a tools/call's
    becomes an error result: backends/errors.py, `over_result_cap`); for a body that is not JSON-RPC, -32700
    without the body's text; None for any other error."""
    message = exc.error.message
    if exc.code == types.CONNECTION_CLOSED:
        if message.startswith(_SSE_FAILED) and message.endswith(_NOT_READ):  # `EventTooManyValues`
            return MCPError(types.INTERNAL_ERROR, message.removeprefix(_SSE_FAILED), {OVER_RESULT_CAP: True})
        return _sse_event_over_cap(message)
    if exc.code != types.PARSE_ERROR or not message.startswith(_SDK_PREFIX):
        return None
    if message.endswith(_NOT_READ):
        return MCPError(types.INTERNAL_ERROR, message.removeprefix(_SDK_PREFIX), {OVER_RESULT_CAP: True})
    shown = unquoted(message)
    return None if shown == message else MCPError(types.PARSE_ERROR, shown)


def _sse_event_over_cap(message: str) -> MCPError | None:
    """The SDK's CONNECTION_CLOSED for an SSE event past the transport's cap (transports.py gives it
    `line_cap(max_result_bytes)`) as the JSON path's refusal, naming the setting; None for any other closing.
    Left as it came, the circuit counted it a failure of the backend's: one caller asking for too much opened
    it for every caller."""
    found = _SSE_EVENT_TOO_LARGE.fullmatch(message)
    if found is None:
        return None
    cap = int(found.group(1))
    text = f"an SSE event of its answer passed {cap:,} bytes (limits.max_result_bytes, with room for the envelope); {_NOT_READ}"
    return MCPError(types.INTERNAL_ERROR, text, {OVER_RESULT_CAP: True})


class CappedBody(httpx2.AsyncByteStream):
    """`inner`'s bytes, decoded when `encoding` is gzip or deflate, up to `cap` of them and `values` values (None:
    not counted; `listing`: the body is a listing page, `values` its budget)."""

    def __init__(
        self,
        inner: httpx2.AsyncByteStream,
        cap: int,
        backend: str,
        encoding: str | None,
        values: int | None = None,
        *,
        listing: bool = False,
    ) -> None:
        self._inner = inner
        self._cap = cap
        self._values = values
        self._listing = listing
        self._counter = ValueCounter(values)  # the body's values so far, counted chunk by chunk: exactly past `values`
        self._backend = backend
        # 32 + MAX_WBITS reads a gzip or a zlib header, which is what HTTP's gzip and deflate are.
        self._inflater = zlib.decompressobj(32 + zlib.MAX_WBITS) if encoding in _INFLATED else None
        self._mender = EscapeMender()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        async for chunk in self._unbroken():
            data = self._inflate(chunk, read)
            read += len(data)
            self._check(read, data)
            if mended := self._mender.feed(data):
                yield mended
        if self._inflater is not None:
            rest = self._inflater.flush()
            self._check(read + len(rest), rest)
            yield self._mender.feed(rest)
        yield self._mender.flush()
        _mended_warning(self._backend, self._mender)

    async def _unbroken(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx2.TransportError as exc:
            raise BodyBroken(self._backend, exc) from None

    def _inflate(self, chunk: bytes, read: int) -> bytes:
        if self._inflater is None:
            return chunk
        try:
            # Never more than the cap allows: a small body that inflates to gigabytes stops here.
            data = self._inflater.decompress(chunk, self._cap + 1 - read)
        except zlib.error as exc:
            raise httpx2.DecodingError(f"backend '{self._backend}' sent a body that does not inflate ({exc})") from None
        if self._inflater.unconsumed_tail:  # input left over once the cap's worth came out
            self._refuse()
        return data

    def _check(self, read: int, data: bytes) -> None:
        """Refuses the body once past `cap` bytes or `values` values: the rest is never read."""
        if read > self._cap:
            self._refuse()
        if self._values is not None:
            self._counter.feed(data)
            if self._counter.values > self._values:
                counted = self._counter.values
                raise BodyTooManyValues(self._backend, self._values, counted, listing=self._listing, whole=False)

    def _refuse(self) -> NoReturn:
        raise BodyTooLarge(self._backend, self._cap)

    async def aclose(self) -> None:
        await self._inner.aclose()


class EventTooManyValues(httpx2.SSEError):
    """An SSE event whose data passed `limits.max_result_values`. An `SSEError`: the SDK answers the waiting
    request with "SSE stream failed: <this message>" (`as_internal_error` makes it the JSON path's refusal), or
    drops a GET stream's event and opens the stream again."""

    def __init__(self, backend: str, most: int, counted: int, *, listing: bool = False) -> None:
        super().__init__(str(BodyTooManyValues(backend, most, counted, listing=listing)))


class CountedEvents(httpx2.AsyncByteStream):
    """`inner`'s SSE bytes as they come, each event's data counted (backends/results.py, `ValueCounter`, a data line
    at a time) before the chunk that ends it passes: an event past `values` raises `EventTooManyValues` and is never
    parsed (`listing`: the stream answers a listing, `values` is a page's budget; None: not counted). Its lone
    surrogate escapes are mended as they pass (`EscapeMender`). Its bytes are bounded by the SDK's
    `max_sse_event_size`, which stops reading first."""

    def __init__(
        self,
        inner: httpx2.AsyncByteStream,
        backend: str,
        values: int | None,
        encoding: str | None = None,
        *,
        listing: bool = False,
    ) -> None:
        self._inner = inner
        self._inflater = zlib.decompressobj(32 + zlib.MAX_WBITS) if encoding in _INFLATED else None
        self._backend = backend
        self._values = values
        self._listing = listing
        self._head = b""  # the first bytes of the line not ended yet: its field's name
        self._line_values = ValueCounter()  # its values, while it may be a data line
        self._after_cr = False  # the last chunk ended with a `\r`: its line ends, perhaps with a `\n` to come
        self._counted = 0  # the values of the event's data lines so far
        self._mender = EscapeMender()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            for piece in self._inflated(chunk):
                if self._values is not None:
                    self._scan(piece)
                if mended := self._mended(piece):
                    yield mended
        yield self._mender.flush()

    def _mended(self, piece: bytes) -> bytes:
        """`piece` through the mender, which holds back what may start an escape cut by the chunk's end (at most 11
        bytes) but never a line's end: no escape spans lines, and the SDK dispatches an event at its blank line."""
        before = self._mender.mended
        end = max(piece.rfind(b"\n"), piece.rfind(b"\r")) + 1
        if end == len(piece):  # the usual chunk: whole lines
            out = self._mender.feed(piece) + self._mender.flush()
        elif end:
            out = self._mender.feed(piece[:end]) + self._mender.flush() + self._mender.feed(piece[end:])
        else:
            out = self._mender.feed(piece)
        if self._mender.mended > before:
            _mended_warning(self._backend, self._mender)
        return out

    def _inflated(self, chunk: bytes) -> Iterator[bytes]:
        """`chunk` inflated `_INFLATE_STEP` bytes at a time: a small chunk that inflates to gigabytes is stopped by
        the SDK's event cap after a step or two, never held whole."""
        if self._inflater is None:
            yield chunk
            return
        try:
            yield self._inflater.decompress(chunk, _INFLATE_STEP)
            while self._inflater.unconsumed_tail:
                yield self._inflater.decompress(self._inflater.unconsumed_tail, _INFLATE_STEP)
        except zlib.error as exc:
            raise httpx2.DecodingError(
                f"backend '{self._backend}' sent a stream that does not inflate ({exc})"
            ) from None

    def _scan(self, chunk: bytes) -> None:
        """Counts `chunk`'s lines as they come, a long line chunk by chunk (never joined nor held). A `\r` that ends
        a chunk ends its line only once the next chunk shows whether a `\n` follows (a `\r\n` cut in two)."""
        start = 0
        if self._after_cr:
            self._line_ended()
            start = 1 if chunk.startswith(b"\n") else 0
        self._after_cr = chunk.endswith(b"\r")
        stop = len(chunk) - 1 if self._after_cr else len(chunk)
        for end in _LINE_END.finditer(chunk, start, stop):
            self._extend_line(chunk[start : end.start()])
            self._line_ended()
            start = end.end()
        self._extend_line(chunk[start:stop])

    def _extend_line(self, piece: bytes) -> None:
        if not piece:
            return
        if len(self._head) < len(_DATA):
            self._head += piece[: len(_DATA) - len(self._head)]
        if _DATA.startswith(self._head):  # a data line, or may be: `data:` holds no value of its own
            self._line_values.feed(piece)

    def _line_ended(self) -> None:
        head, values = self._head, self._line_values.values
        self._head, self._line_values = b"", ValueCounter()
        if not head:
            self._event_ended()
        elif head == _DATA:
            # Counted apart from the event's other data lines: in valid JSON no string spans two (a raw line
            # break in a string is invalid), and a parse of an invalid one stops where it breaks.
            self._counted += values

    def _event_ended(self) -> None:
        counted, self._counted = self._counted, 0
        if self._values is not None and counted > self._values:
            refused = EventTooManyValues(self._backend, self._values, counted, listing=self._listing)
            _status_log.warning(self._backend, "%s", refused)  # the SDK logs none (a GET stream's event: no caller)
            raise refused

    async def aclose(self) -> None:
        await self._inner.aclose()


def _mended_warning(backend: str, mender: EscapeMender) -> None:
    if mender.mended:
        _status_log.warning(
            f"{backend} surrogates",
            "backend %s: lone surrogates (unpaired \\ud800-\\udfff escapes) in its answers: passed on with U+FFFD in "
            "their place (%d so far in this answer)",
            backend,
            mender.mended,
        )


def mend_sse_streams(backend: str) -> Callable[[httpx2.Response], Awaitable[None]]:
    """A response hook for the 2024 SSE transport's client: its event stream read through `CountedEvents` for the
    lone surrogates it mends alone (values not counted: that transport's events are capped by the SDK). Without it
    one `\\ud800` in a tool's description lost the backend all its tools, and in a result held its call until the
    call's timeout: the SDK's parse refuses the event."""

    async def hook(response: httpx2.Response) -> None:
        _counted_events(response, backend, None)

    return hook


def _counted_events(response: httpx2.Response, backend: str, values: int | None, *, listing: bool = False) -> bool:
    """`response`'s SSE stream read through `CountedEvents` (the SDK caps each event's bytes itself); False when
    `response` is no SSE stream."""
    stream = response.stream
    if not isinstance(stream, httpx2.AsyncByteStream):
        return False
    if response.headers.get("content-type", "").split(";")[0].strip().lower() != SSE_TYPE:
        return False
    encoding = response.headers.get("content-encoding", "").strip().lower() or None
    response.stream = CountedEvents(stream, backend, values, encoding, listing=listing)
    if encoding in _INFLATED:
        del response.headers["content-encoding"]  # inflated there: httpx must not inflate it again
    return True


def cap_json_bodies(
    backend: str, cap: int, secrets: Iterable[str] = (), values: int | None = None
) -> Callable[[httpx2.Response], Awaitable[None]]:
    """A response hook for a backend's HTTP client: every body but an SSE stream is read through `CappedBody`,
    with `values` (`limits.max_result_values`), or `page_values` of it for a listing's page;
    an error status's body becomes a JSON-RPC error naming the status (`secrets` masked in it)."""
    quiet_body_too_large()
    masked = list(secrets)

    async def hook(response: httpx2.Response) -> None:
        status = response.status_code
        if response.request.method == "POST" and status >= 400 and status not in _LEFT_TO_SDK:
            await _status_as_jsonrpc_error(response, backend, masked)
            return
        if not isinstance(response.stream, httpx2.AsyncByteStream):
            return
        listing = _lists(response.request)
        counted = page_values(values) if listing and values is not None else values
        if _counted_events(response, backend, counted, listing=listing):
            return
        encoding = response.headers.get("content-encoding", "").strip().lower() or None
        response.stream = CappedBody(response.stream, cap, backend, encoding, counted, listing=listing)
        if encoding in _INFLATED:
            del response.headers["content-encoding"]  # inflated above: httpx must not inflate it again

    return hook


_METHOD = re.compile(rb'"method"\s*:\s*"([^"\\]{1,64})"')
_METHOD_SCAN = 256  # bytes of a POST's body its method is looked for in (the SDK writes it ahead of the params)


def _lists(request: httpx2.Request) -> bool:
    """Whether the POST asks for a listing page (`LISTING_METHODS`)."""
    try:
        head = request.content[:_METHOD_SCAN]
    except httpx2.RequestNotRead:
        return False
    found = _METHOD.search(head)
    return found is not None and found.group(1).decode() in LISTING_METHODS


async def _status_as_jsonrpc_error(response: httpx2.Response, backend: str, secrets: list[str]) -> None:
    """Replace an error status's body with a JSON-RPC error naming the status, unless it is one already."""
    body, whole = await _read_error_body(response, backend)
    if not (whole and _is_jsonrpc_error(body)):
        message = status_message(backend, response, body, secrets)
        _status_log.warning(backend, "%s", message)
        error = {"code": types.INTERNAL_ERROR, "message": message, "data": {HTTP_STATUS: response.status_code}}
        body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
    response.stream = httpx2.ByteStream(body)
    response.headers.pop("content-encoding", None)  # inflated while read
    response.headers["content-type"] = "application/json"
    response.headers["content-length"] = str(len(body))


async def _read_error_body(response: httpx2.Response, backend: str) -> tuple[bytes, bool]:
    """At most `ERROR_BODY_BYTES` of the body (inflated), and whether that is all of it."""
    stream = response.stream
    if not isinstance(stream, httpx2.AsyncByteStream):
        return b"", False
    encoding = response.headers.get("content-encoding", "").strip().lower() or None
    pieces: list[bytes] = []
    whole = True
    try:
        async for piece in CappedBody(stream, ERROR_BODY_BYTES, backend, encoding):
            pieces.append(piece)
    except (httpx2.StreamError, httpx2.DecodingError, httpx2.TransportError):
        whole = False  # too long, or broken: not a JSON-RPC error to pass on, only its start to quote
    finally:
        await stream.aclose()
    return b"".join(pieces)[:ERROR_BODY_BYTES], whole


def _is_jsonrpc_error(body: bytes) -> bool:
    try:
        return isinstance(types.jsonrpc_message_adapter.validate_json(body, by_name=False), types.JSONRPCError)
    except ValueError:
        return False


def status_message(backend: str, response: httpx2.Response, body: bytes, secrets: list[str]) -> str:
    """`backend 'x' answered HTTP 502 Bad Gateway: <the body's start>`: the phrase is the standard one (the
    server's own could say anything), the body masked and cut, left out when it is an HTML page."""
    status = response.status_code
    try:
        phrase = f" {HTTPStatus(status).phrase}"
    except ValueError:
        phrase = ""
    message = f"backend '{backend}' answered HTTP {status}{phrase}"
    text = body.decode("utf-8", "replace").strip()
    content_type = response.headers.get("content-type", "").lower()
    if not text or "html" in content_type or text.startswith("<"):
        return message
    # A credential the gateway sent could come back in the body (a debug page echoing the request), and one
    # fetched at run time (an OAuth token) is not among the config's secrets: masked too.
    sent = with_escaped_forms(
        part
        for name, value in response.request.headers.items()
        if SECRET_NAME.search(name.replace("-", "_"))
        for part in (value, *value.split())
    )
    return f"{message}: {one_line(redact(text, [*secrets, *sent]), ERROR_BODY_SHOWN)}"
