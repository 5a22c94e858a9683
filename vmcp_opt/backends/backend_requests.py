"""Requests a backend sends the gateway on its long-lived session (ping, sampling, elicitation, roots), bounded.

The SDK's client session starts one task per request it reads, and each task waits to write its answer. A backend
that sent requests without pause and did not read its answers piled up a task and an answer per request (200,000
pings on stdio: 117 to 1,573 MB in 32 s, freed only when the health checker restarted it; over HTTP, pings on the
GET stream whose answers' POSTs hung: 657 MB in 21 s); one that did read still cost a 215 MB spike per 20,000.
Here at most `MAX_REQUESTS_IN_FLIGHT` of a session's requests are unanswered at once: one counts from the moment it
is read until its answer is written (or its write fails or is given up on), or until the SDK settles it unanswered
(the backend cancelled it: the SDK's `on_request_unanswered` hook, which client transports leave unset). Past the
bound a request never reaches the SDK: it is answered with a JSON-RPC error (`TOO_MANY`), written by one task of
this module's from a queue of `MAX_WAITING_REFUSALS`; when even that queue is full the backend is not reading its
answers, and the request is dropped unanswered. Both are counted in one warning a minute per backend.

Not backpressure (stopping to read): the backend's answers to the gateway's own requests come on the same stream,
and they would wait behind its flood, calls in flight timing out.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import ServerMessageMetadata, SessionMessage

from vmcp_opt.backends.forwarding import WrappedReadStream, WrappedWriteStream

logger = logging.getLogger(__name__)

# A backend's requests unanswered at once: a well-behaved backend asks one thing at a time per call (a ping, a
# sampling request), and a few calls overlap; a task and an answer each is what a flood can make the gateway hold.
MAX_REQUESTS_IN_FLIGHT = 32
# Refusals waiting for the transport's writer: a backend that reads takes them as fast as they come; one that does
# not has its further requests dropped rather than queued without end.
MAX_WAITING_REFUSALS = 16
# Seconds between two warnings about one backend's refused requests.
WARNING_INTERVAL = 60.0
TOO_MANY = "too many requests in flight from this backend"
TOO_MANY_CODE = -32000

# When each backend's last warning was logged: one a minute per backend, across its sessions (a flooding backend
# is restarted by the health checker, and each new session would warn again).
_warned_at: dict[str, float] = {}


class RequestBound:
    """One session's backend requests not yet answered, and what became of those past the bound."""

    def __init__(self, backend: str, refusals: MemoryObjectSendStream[types.RequestId]) -> None:
        self.backend = backend
        self.most = MAX_REQUESTS_IN_FLIGHT
        self._refusals = refusals
        # Counted per id: a backend may reuse one, and each copy is a task of the SDK's.
        self._open: Counter[types.RequestId] = Counter()
        self.in_flight = 0
        self.refused = 0
        self.dropped = 0

    def admit(self, message: SessionMessage, request_id: types.RequestId) -> SessionMessage | None:
        """`message`, the request `request_id`, on its way to the SDK, counted; None when refused or dropped here."""
        if self.in_flight >= self.most:
            self._refuse(request_id)
            return None
        self._open[request_id] += 1
        self.in_flight += 1
        return _told_if_unanswered(message, lambda: self.answered(request_id))

    def is_open(self, request_id: types.RequestId) -> bool:
        return self._open[request_id] > 0

    def answered(self, request_id: types.RequestId) -> None:
        """The SDK is done with one request of this id: its answer written (or given up on), or settled unanswered."""
        if self._open[request_id] <= 0:
            return
        self._open[request_id] -= 1
        if self._open[request_id] == 0:
            del self._open[request_id]
        self.in_flight -= 1

    def _refuse(self, request_id: types.RequestId) -> None:
        try:
            self._refusals.send_nowait(request_id)
            self.refused += 1
        except anyio.WouldBlock:
            self.dropped += 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the session is closing: nothing more is written
        self._warn()

    def _warn(self) -> None:
        now = time.monotonic()
        last = _warned_at.get(self.backend)
        if last is not None and now - last < WARNING_INTERVAL:
            return
        _warned_at[self.backend] = now
        logger.warning(
            "backend %s: %s: %d of its requests refused, %d dropped unanswered (it does not read its answers) "
            "on this session so far; at most %d wait for their answers at once",
            self.backend,
            TOO_MANY,
            self.refused,
            self.dropped,
            self.most,
        )


def _told_if_unanswered(message: SessionMessage, settled: Callable[[], None]) -> SessionMessage:
    """`message` with the SDK's hook for a request it settles without an answer (the backend cancelled it) freeing
    its place. Client transports attach no metadata to what they read; other metadata is left as it is."""

    async def unanswered() -> None:
        settled()

    metadata = message.metadata
    if metadata is None:
        return SessionMessage(message.message, metadata=ServerMessageMetadata(on_request_unanswered=unanswered))
    if isinstance(metadata, ServerMessageMetadata) and metadata.on_request_unanswered is None:
        return SessionMessage(message.message, metadata=dataclasses.replace(metadata, on_request_unanswered=unanswered))
    return message


class BoundedRequestsReadStream(WrappedReadStream):
    """The transport's read stream as the SDK's session reads it: a backend's requests past the bound stay here."""

    def __init__(self, inner: Any, bound: RequestBound, exempt: frozenset[str]) -> None:
        super().__init__(inner)
        self._bound = bound
        self._exempt = exempt

    async def receive(self) -> Any:
        while True:
            item = await self._inner.receive()
            request = item.message if isinstance(item, SessionMessage) else None
            if not isinstance(request, types.JSONRPCRequest) or request.method in self._exempt:
                return item
            admitted = self._bound.admit(item, request.id)
            if admitted is not None:
                return admitted


class AnswerWatchingWriteStream(WrappedWriteStream):
    """The transport's write stream as the SDK's session writes to it: an answer to a counted request frees its
    place once written (or once its write fails or is given up on)."""

    def __init__(self, inner: Any, bound: RequestBound) -> None:
        super().__init__(inner)
        self._bound = bound

    async def send(self, item: Any) -> None:
        message = item.message if isinstance(item, SessionMessage) else None
        if not isinstance(message, types.JSONRPCResponse | types.JSONRPCError) or message.id is None:
            await self._inner.send(item)
            return
        request_id = message.id
        if not self._bound.is_open(request_id):
            await self._inner.send(item)
            return
        try:
            await self._inner.send(item)
        finally:
            self._bound.answered(request_id)


async def _write_refusals(write: Any, refusals: MemoryObjectReceiveStream[types.RequestId]) -> None:
    error = types.ErrorData(code=TOO_MANY_CODE, message=TOO_MANY, data={"most": MAX_REQUESTS_IN_FLIGHT})
    async with refusals:
        async for request_id in refusals:
            try:
                await write.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the transport ended: the requests ended with it


@asynccontextmanager
async def bounded_backend_requests(
    read: Any, write: Any, backend: str, exempt: frozenset[str] = frozenset()
) -> AsyncIterator[tuple[Any, Any]]:
    """`(read, write)` for a backend's `ClientSession`, with the backend's requests bounded (module docstring).
    `write` is the transport's own stream: refusals go there directly, never through the session. `exempt`:
    methods bounded elsewhere (a dedicated session relays sampling, elicitation and roots within `AskBound`,
    which lets 100 a call wait for a slot: counted here too, the 33rd at once was refused)."""
    refusals, waiting = anyio.create_memory_object_stream[types.RequestId](MAX_WAITING_REFUSALS)
    bound = RequestBound(backend, refusals)
    async with anyio.create_task_group() as group:
        group.start_soon(_write_refusals, write, waiting)
        try:
            yield BoundedRequestsReadStream(read, bound, exempt), AnswerWatchingWriteStream(write, bound)
        finally:
            refusals.close()
            group.cancel_scope.cancel()
