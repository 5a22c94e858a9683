"""Bases for wrapping the SDK's transport streams: a subclass overrides `receive` (or `send`) only;
`OldClientContent`, the write side that keeps content blocks an older client cannot read from reaching it; and
`served_until`, which cuts a held stream short when something else ends first (its credential's lapse)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import anyio
import mcp_types as types
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from starlette.types import Message, Send


class _Closing:
    """Closing a wrapper closes what it wraps."""

    _inner: ReadStream[SessionMessage | Exception] | WriteStream[SessionMessage]

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> bool | None:
        await self.aclose()
        return None


class ReadStreamWrapper(_Closing):
    """Passes `inner`'s items on; iteration and the sender's context as the SDK expects them."""

    _inner: ReadStream[SessionMessage | Exception]

    def __init__(self, inner: ReadStream[SessionMessage | Exception]) -> None:
        self._inner = inner

    @property
    def last_context(self) -> Any:
        # The SDK restores the sender's context from here (`getattr(stream, "last_context", None)`).
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        return await self._inner.receive()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


class WriteStreamWrapper(_Closing):
    """Passes what is sent on to `inner`."""

    _inner: WriteStream[SessionMessage]

    def __init__(self, inner: WriteStream[SessionMessage]) -> None:
        self._inner = inner

    async def send(self, item: SessionMessage, /) -> None:
        await self._inner.send(item)


# Content block types a client of each older protocol version cannot read: the SDK shapes every handshake-era
# result by the 2025-11-25 schema, and older SDKs' clients (Python before 1.10, TypeScript before 1.13) fail the
# whole call on a block type their content union does not have.
_UNKNOWN_BLOCKS = {
    "2024-11-05": frozenset({"resource_link", "audio"}),
    "2025-03-26": frozenset({"resource_link"}),
}


class OldClientContent(WriteStreamWrapper):
    """The write side of one client's session: once its `initialize` answer shows an older protocol version, each
    tool result's and prompt's content block of a type that version lacks is sent as a text block that says
    what it was (a resource link's URI, which `resources/read` still serves). Newer clients' messages pass as
    they are. A session restored on another replica (`sessions.store: redis`) gets its client's `version` from
    its record: the replayed `initialize`'s answer is dropped before it gets here."""

    def __init__(self, inner: WriteStream[SessionMessage], version: str | None = None) -> None:
        super().__init__(inner)
        self._unknown = _UNKNOWN_BLOCKS.get(version or "", frozenset())

    async def send(self, item: SessionMessage, /) -> None:
        message = item.message
        if isinstance(message, types.JSONRPCResponse):
            result = message.result
            if "protocolVersion" in result and "serverInfo" in result:  # the answer to `initialize`
                self._unknown = _UNKNOWN_BLOCKS.get(str(result["protocolVersion"]), frozenset())
            elif self._unknown:
                _downgrade(result, self._unknown)
        await self._inner.send(item)


def _downgrade(result: dict[str, Any], unknown: frozenset[str]) -> None:
    """Replaces, in place, the blocks of `unknown` types in a tool result's `content` or a prompt's `messages`."""
    blocks = result.get("content")
    if isinstance(blocks, list):
        for i, block in enumerate(blocks):
            if isinstance(block, dict) and block.get("type") in unknown:
                blocks[i] = _as_text(block)
    messages = result.get("messages")
    for prompt_message in messages if isinstance(messages, list) else []:
        content = prompt_message.get("content") if isinstance(prompt_message, dict) else None
        if isinstance(content, dict) and content.get("type") in unknown:
            prompt_message["content"] = _as_text(content)


def _as_text(block: dict[str, Any]) -> dict[str, Any]:
    if block.get("type") == "resource_link":
        text = f"Resource link: {block.get('name', '')} <{block.get('uri', '')}>"
        if block.get("mimeType"):
            text += f" ({block['mimeType']})"
        if block.get("description"):
            text += f": {block['description']}"
    else:
        kind = f"{block.get('type')} content ({block.get('mimeType', 'unknown type')})"
        text = f"[{kind} left out: this protocol version cannot carry it]"
    return {"type": "text", "text": text}


async def served_until(ended: Callable[[], Awaitable[None]], serve: Callable[[], Awaitable[None]]) -> bool:
    """Runs `serve` until it returns, or until `ended` does and `serve` is cancelled; whether `ended` cut it short.
    An error of `serve` is raised as it is, not in an exception group: callers above it catch it by its type."""
    cut = False
    failure: Exception | None = None
    async with anyio.create_task_group() as both:

        async def end() -> None:
            nonlocal cut
            await ended()
            cut = True
            both.cancel_scope.cancel()

        both.start_soon(end)
        try:
            await serve()
        except Exception as exc:
            failure = exc
        both.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return cut


class ResponseProgress:
    """An ASGI `send` that notes how far the response got: whether its status is out, and whether its body is."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.finished = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)
