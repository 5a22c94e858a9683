"""A streamable HTTP backend's JSON answers, read no further than `limits.max_result_bytes` allows.

The SDK's client reads a JSON response whole (`response.aread()`), then parses it on the event loop; its SSE
events it caps per event (`max_sse_event_size`, 1 MiB unless told). A backend could otherwise make the
gateway hold and parse any number of bytes. `cap_json_bodies` is an httpx response hook: it runs once the
headers are in and wraps a JSON body's stream in `CappedBody`, which stops at the cap (decoded bytes: a gzip
body is inflated here, in bounded steps, rather than by httpx) with `BodyTooLarge`. That is an
`httpx2.StreamError`, which the SDK turns into a JSON-RPC error for the waiting request at once.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn

import httpx2

_SSE = "text/event-stream"
_INFLATED = ("gzip", "deflate", "x-gzip")


class BodyTooLarge(httpx2.StreamError):
    """A backend's answer passed the cap; the message names the backend and the setting."""


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
        raise BodyTooLarge(
            f"backend '{self._backend}' answered with more than {self._cap:,} bytes "
            "(limits.max_result_bytes, with room for the envelope); the answer was not read further"
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def cap_json_bodies(backend: str, cap: int) -> Callable[[httpx2.Response], Awaitable[None]]:
    """A response hook for a backend's HTTP client: every body but an SSE stream is read through `CappedBody`."""

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
