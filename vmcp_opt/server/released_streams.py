"""An idle HTTP session keeps neither its last request nor its last answer in memory.

Two loops of the SDK read one session's messages and keep the last one in a local variable while they wait for the
next: the server's dispatcher its last request (`item`, with the metadata holding the HTTP request and its body),
the transport's message router its last answer (`session_message`, `message`). A session that made one 4 MB call
then idled held ~17 MB until its next message or its idle timeout: one address's 100 sessions, ~1.7 GB.

- `ReleasingReads`, the read side as the dispatcher sees it, hands it a copy of each message and empties that copy
  when the dispatcher asks for the next one: by then it has taken the message and metadata it dispatches (the
  handler it starts holds them while it runs, and no longer). The sender's context goes the same way.
- `ReleasingWrites`, the write side in front of the router, sends `release_message()` after each answer (a
  response or an error, a request's last message): the router's locals then hold that instead. It is a
  notification tied to a stream id no request has (`RELEASE_STREAM`, random per process): the router finds no
  stream for it, and the event stores skip it (server/event_store.py `UnsentAnswers`), so no client sees it.
  One small extra message per answer; the router would otherwise need a copy of its own (it is a closure inside
  the SDK's `connect`).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.streamable_http import StreamId
from mcp.shared._stream_protocols import WriteStream
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCResponse

from vmcp_opt.server.streams import ReadStreamWrapper, WriteStreamWrapper

# The stream the release message is for: no request's (request ids are the client's; this one it cannot guess).
RELEASE_STREAM: StreamId = f"vmcp-release-{secrets.token_hex(8)}"
_RELEASED = JSONRPCNotification(jsonrpc="2.0", method="notifications/vmcp/released")


def release_message() -> SessionMessage:
    return SessionMessage(_RELEASED, metadata=ServerMessageMetadata(related_request_id=RELEASE_STREAM))


class ReleasingReads(ReadStreamWrapper):
    """Each message a copy, emptied when the next is asked for (the reader has dispatched it by then)."""

    _given: SessionMessage | None = None
    _context: Any = None

    @property
    def last_context(self) -> Any:
        return self._context

    async def receive(self) -> SessionMessage | Exception:
        self._release()
        item = await self._inner.receive()
        inner: Any = self._inner  # the SDK's context stream: its `last_context` is not in the stream protocol
        self._context = getattr(inner, "last_context", None)
        if self._context is not None:
            inner.last_context = None  # ours alone now: it goes with the message
        if isinstance(item, SessionMessage):
            item = self._given = SessionMessage(item.message, item.metadata)
        return item

    def _release(self) -> None:
        given, self._given, self._context = self._given, None, None
        if given is not None:
            given.message = _RELEASED
            given.metadata = None


class ReleasingWrites(WriteStreamWrapper):
    """After each answer, the release message, so the router does not keep the answer while the session idles; and
    then the answered request's stream (`request_stream(id)`, its send side) closed: its reader ends after the
    answer. The SDK's resumed stream (`Last-Event-ID` while the call ran) read it for ever, pinging, and held the
    session past its idle timeout; every other reader stops at the answer anyway."""

    def __init__(
        self, inner: WriteStream[SessionMessage], request_stream: Callable[[str], MemoryObjectSendStream[Any] | None]
    ) -> None:
        super().__init__(inner)
        self._request_stream = request_stream

    async def send(self, item: SessionMessage, /) -> None:
        answer = item.message
        if not isinstance(answer, JSONRPCResponse | JSONRPCError) or answer.id is None:
            await self._inner.send(item)
            return
        # Taken before the answer goes: a request of the same id may follow it at once, with a stream of its own.
        stream = self._request_stream(str(answer.id))
        await self._inner.send(item)
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            # The router has routed the answer once it takes this; a session ending now is no failure.
            await self._inner.send(release_message())
        if stream is not None:
            stream.close()
