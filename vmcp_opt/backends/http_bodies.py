"""A streamable HTTP backend's JSON answers, read no further than `limits.max_result_bytes` allows.

The SDK's client reads a JSON response whole (`response.aread()`), then parses it on the event loop; its SSE
events it caps per event (`max_sse_event_size`, 1 MiB unless told). A backend could otherwise make the
gateway hold and parse any number of bytes. `cap_json_bodies` is an httpx response hook: it runs once the
headers are in and wraps a JSON body's stream in `CappedBody`, which stops at the cap (decoded bytes: a gzip
body is inflated here, in bounded steps, rather than by httpx) with `BodyTooLarge`. That is an
`httpx2.StreamError`, which the SDK turns into a JSON-RPC error for the waiting request at once.

The SDK reports it as a client's unparseable request would be (-32700 "Failed to parse JSON response: …")
and logs an ERROR with a traceback each time: a client calling such a tool in a loop would flood the log.
`QuietBodyTooLarge` makes those records one WARNING line per backend a minute, and `as_internal_error` gives
the caller -32603 with our message alone, as the stdio transport answers the same limit.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn

import httpx2
import mcp_types as types
from mcp.shared.exceptions import MCPError

logger = logging.getLogger(__name__)
_SSE = "text/event-stream"
_INFLATED = ("gzip", "deflate", "x-gzip")
_SDK_LOGGER = "mcp.client.streamable_http"
_SDK_PREFIX = "Failed to parse JSON response: "  # the SDK's message for a body it could not read
_NOT_READ = "the answer was not read further"  # how `BodyTooLarge`'s message ends


class BodyTooLarge(httpx2.StreamError):
    """A backend's answer passed the cap; the message names the backend and the setting."""

    def __init__(self, backend: str, cap: int) -> None:
        super().__init__(
            f"backend '{backend}' answered with more than {cap:,} bytes "
            f"(limits.max_result_bytes, with room for the envelope); {_NOT_READ}"
        )
        self.backend = backend


class QuietBodyTooLarge(logging.Filter):
    """On the SDK's logger: a record about a `BodyTooLarge` becomes one WARNING line per backend and interval,
    without the traceback; every other record passes. (Not `routing.budget.ThrottledLog`: routing imports
    this package.)"""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held_back: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, BodyTooLarge):
            return True
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
    """The SDK's -32700 for a body `CappedBody` refused, as -32603 with our message alone; None for any
    other error."""
    message = exc.error.message
    if exc.code != types.PARSE_ERROR or not message.startswith(_SDK_PREFIX) or not message.endswith(_NOT_READ):
        return None
    return MCPError(types.INTERNAL_ERROR, message.removeprefix(_SDK_PREFIX))


class CappedBody(httpx2.AsyncByteStream):
    """`inner`'s bytes, decoded when `encoding` is gzip or deflate, up to `cap` of them."""

    def __init__(self, inner: httpx2.AsyncByteStream, cap: int, backend: str, encoding: str | None) -> None:
        self._inner = inner
        self._cap = cap
        self._backend = backend
        # 32 + MAX_WBITS reads a gzip or a zlib header, which is what HTTP's gzip and deflate are.
        self._inflater = zlib.decompressobj(32 + zlib.MAX_WBITS) if encoding in _INFLATED else None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        async for chunk in self._inner:
            data = self._inflate(chunk, read)
            read += len(data)
            self._check(read)
            yield data
        if self._inflater is not None:
            rest = self._inflater.flush()
            self._check(read + len(rest))
            yield rest

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

    def _check(self, read: int) -> None:
        if read > self._cap:
            self._refuse()

    def _refuse(self) -> NoReturn:
        raise BodyTooLarge(self._backend, self._cap)

    async def aclose(self) -> None:
        await self._inner.aclose()


def cap_json_bodies(backend: str, cap: int) -> Callable[[httpx2.Response], Awaitable[None]]:
    """A response hook for a backend's HTTP client: every body but an SSE stream is read through `CappedBody`."""
    quiet_body_too_large()

    async def hook(response: httpx2.Response) -> None:
        if response.headers.get("content-type", "").split(";")[0].strip().lower() == _SSE:
            return
        encoding = response.headers.get("content-encoding", "").strip().lower() or None
        if not isinstance(response.stream, httpx2.AsyncByteStream):
            return
        response.stream = CappedBody(response.stream, cap, backend, encoding)
        if encoding in _INFLATED:
            del response.headers["content-encoding"]  # inflated above: httpx must not inflate it again

    return hook
