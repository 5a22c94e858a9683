"""The client's allow-listed headers (`backends[].auth.passthrough_headers`) on a backend request's HTTP POST.

The SDK's streamable HTTP transport sets the headers a message's `ClientMessageMetadata.headers` carries, and the
session writes a request to the transport from the task that sends it. So a request sent while `FORWARDED`
holds headers gets them: `forwarding()` sets the variable around `send_request`, and `HeaderWriteStream`, the
transport's write stream as the session sees it, merges them into the message's metadata (the SDK's own
headers, such as `MCP-Protocol-Version`, win). Other transports ignore them (stdio has no headers; SSE posts
carry none per message).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Self

import anyio
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp_types import JSONRPCRequest

FORWARDED: ContextVar[dict[str, str] | None] = ContextVar("vmcp_forwarded_headers", default=None)


@contextmanager
def forwarding(headers: dict[str, str] | None) -> Iterator[None]:
    if not headers:
        yield
        return
    token = FORWARDED.set(headers)
    try:
        yield
    finally:
        FORWARDED.reset(token)


class WrappedWriteStream:
    """A transport write stream in front of another: everything but `send` is the inner stream's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def send(self, item: Any) -> None:
        await self._inner.send(item)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        result: bool | None = await self._inner.__aexit__(*exc)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class WrappedReadStream:
    """A transport read stream in front of another, as the SDK's session reads it: subclasses change `receive`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        return await self._inner.receive()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class HeaderWriteStream(WrappedWriteStream):
    """A transport write stream that adds `FORWARDED` headers to the requests written through it."""

    async def send(self, item: Any) -> None:
        headers = FORWARDED.get()
        if headers and isinstance(item, SessionMessage) and isinstance(item.message, JSONRPCRequest):
            metadata = item.metadata
            if isinstance(metadata, ClientMessageMetadata):
                merged = {**headers, **(metadata.headers or {})}
                item = SessionMessage(item.message, metadata=dataclasses.replace(metadata, headers=merged))
            elif metadata is None:
                item = SessionMessage(item.message, metadata=ClientMessageMetadata(headers=dict(headers)))
        await self._inner.send(item)
