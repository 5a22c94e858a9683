"""An answer's bytes charged from the moment its result is ready (`limits.held_answer_bytes`, server/held_answers.py).

Checked when the result was ready and charged only once its bytes were written, answers that came back at the same
moment all passed the check before any was charged: 11 of 30 resumed 9 MB answers, left unread, passed a 64 MiB
bound together (+240 MiB RSS). `RequestsInFlight` (server/in_flight.py) measures the result (`answer_size`), then
checks and charges it in one step (`HeldAnswers.reserve`), with no await between. The reservation lasts until the
connection that sends the answer takes the charge over (`AnswerHold.reserve`, counted once with the bytes it
becomes), or it is known that no connection will:

- a request of a session (server/lazy_stream.py) may be answered on another connection than its POST's (a GET
  resuming its stream) or on none (its client left): its reservation waits in the session's `SessionCharges`,
  by request id, until the answer's writer takes it (the POST's JSON answer, or the stream whose writer makes its
  event: `SENDING_HOLD`), and is released when the answer reached no stream (`ReservedAnswers`), or its stream
  ended first, or the session did;
- any other request (a 2026-07-28 POST) is answered on its own connection: the reservation is the connection's at
  once, until its response ends.

`SessionCharges` also names the caller a session's answers are charged to (its requests' last), for what passes no
server middleware: a resuming GET and the standalone GET stream.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import anyio.to_thread
from mcp.shared._stream_protocols import WriteStream
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCError, JSONRPCResponse

from vmcp_opt.backends.results import INLINE_CHARS, json_size
from vmcp_opt.server.held_answers import AnswerHold, HeldAnswers, Reservation
from vmcp_opt.server.streams import WriteStreamWrapper

# The key in a session request's ASGI scope under which its session's `SessionCharges` is.
CHARGES_KEY = "vmcp.session_charges"
# The connection an SSE response's writer sends on (set around the response: its writer task inherits it).
SENDING_HOLD: ContextVar[AnswerHold | None] = ContextVar("vmcp_sending_hold", default=None)


async def answer_size(result: Any, cap: int) -> int:
    """About `result`'s size as JSON, at most `cap`: walked on the event loop up to `INLINE_CHARS`, past it in a
    worker thread (a result of many values takes tens of milliseconds)."""
    size = json_size(result, INLINE_CHARS)
    if size is None:
        size = await anyio.to_thread.run_sync(json_size, result, cap)
    return cap if size is None else size


class SessionCharges:
    """One session's: the caller its answers are charged to, and its answers reserved but not yet taken by the
    connection that sends them, by request id."""

    def __init__(self) -> None:
        self.owner: tuple[HeldAnswers, str] | None = None  # set by each request's `RequestsInFlight`
        self._waiting: dict[str, Reservation] = {}

    def place(self, request_id: str, reservation: Reservation) -> None:
        previous = self._waiting.pop(request_id, None)
        if previous is not None:  # an id reused while its answer waited: that answer is gone
            previous.release()
        self._waiting[request_id] = reservation

    def take(self, request_id: str, hold: AnswerHold | None) -> None:
        """The answer to `request_id` is being sent on `hold`'s connection (None: on no counted connection)."""
        reservation = self._waiting.pop(request_id, None)
        if reservation is None:
            return
        if hold is None:
            reservation.release()
        else:
            hold.reserve(reservation)

    def release(self, request_id: str) -> None:
        self.take(request_id, None)

    def release_all(self) -> None:
        for request_id in list(self._waiting):
            self.release(request_id)


def session_charges(scope: object) -> SessionCharges | None:
    charges = scope.get(CHARGES_KEY) if isinstance(scope, dict) else None
    return charges if isinstance(charges, SessionCharges) else None


class ReservedAnswers(WriteStreamWrapper):
    """A session's write side, in front of the transport's router: an answer that reached no request's stream (its
    client left, and has not resumed) has its reservation released once routed. It is then in the event store,
    which bounds it (`sessions.*`); a resumption that replays it is charged as it is written."""

    def __init__(self, inner: WriteStream[SessionMessage], charges: SessionCharges, streams: dict[Any, Any]) -> None:
        super().__init__(inner)
        self._charges = charges
        self._streams = streams  # the transport's request streams, by request id

    async def send(self, item: SessionMessage, /) -> None:
        await self._inner.send(item)
        answer = item.message
        # Routed by now: the write side behind this one waits for the router to take a message after each answer.
        if isinstance(answer, JSONRPCResponse | JSONRPCError) and answer.id is not None:
            request_id = str(answer.id)
            if request_id not in self._streams:  # no reader to take it (or it ended, releasing it already)
                self._charges.release(request_id)
