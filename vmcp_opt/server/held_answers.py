"""Bytes of answers written out that clients have not taken yet, per caller and in total
(`limits.held_answer_bytes`).

A client that stops reading leaves its answers in the gateway: uvicorn writes a JSON answer whole, and what the
kernel has no room for stays in the connection's transport until the client reads it or `server.write_timeout`
resets the connection. `requests_in_flight` does not bound that, as a call ends once its answer is written: one
caller sending 100 calls of a 9 MB tool and reading none raised the gateway's RSS from 115 MB to 734 MB.

The connection counts, not the call (server/connections.py): when its transport pauses writing (past asyncio's
high-water mark, 64 KiB) its unsent bytes are charged to the caller its last request was tagged with, and released
when it resumes (drained to the low-water mark), or closes. An SSE event is charged while its write waits
(`RetainedChunks`, server/lazy_stream.py); the connection's charge is the larger of that and the unsent bytes, the
same answer counted once. `RequestsInFlight` tags the connection and checks the caller before its call and again
when the call's answer is ready, charging its size then in the same step (`reserve`, server/reserved_answers.py):
past a bound the answer is the JSON-RPC error naming it (`ResultDropped`: the call ran), so its result is dropped
rather than held. A GET resuming a stream (Last-Event-ID) passes no middleware: its connection is tagged with the
caller of the session's last request and checked there (`resumption_refused`); the standalone GET stream and a
JSON-RPC batch's stream are charged as a request's SSE stream is, and not refused.
A client reading normally never reaches the check's refusal, and pays a dictionary lookup per call; its answers
are charged only for the moments the kernel keeps them waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import NoReturn

import mcp_types as types
from mcp.shared.exceptions import MCPError
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Send

from vmcp_opt.backends.results import json_size
from vmcp_opt.config.limits import HeldAnswerBytesConfig
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing.budget import LimitReached

logger = logging.getLogger(__name__)

SETTING = "limits.held_answer_bytes"
# What a refused client is told to wait: a client that reads drains its answers within moments.
RETRY_AFTER = 1.0
# The key in the ASGI scope of every HTTP request under which its connection's `AnswerHold` is.
SCOPE_KEY = "vmcp.answer_hold"
MIB = 1024 * 1024


class HeldAnswers:
    """Unsent answer bytes per caller and their sum; `check` refuses a caller at or past either bound."""

    def __init__(self, config: HeldAnswerBytesConfig) -> None:
        self.per_caller = config.per_caller
        self.total = config.total
        self._held: dict[str, int] = {}
        self._count = 0  # the sum of `_held`, kept: every call reads it
        self._log = ThrottledLog(logger)

    def __len__(self) -> int:
        return self._count

    def held_by(self, caller: str) -> int:
        return self._held.get(caller, 0)

    def change(self, caller: str, delta: int) -> None:
        held = self._held.get(caller, 0) + delta
        if held > 0:
            self._held[caller] = held
        else:
            self._held.pop(caller, None)
        self._count += delta

    def check(self, caller: str) -> None:
        """Raise `LimitReached` when `caller`, or the gateway, holds its bound of unread answers or more."""
        held = self._held.get(caller, 0)
        if held >= self.per_caller:
            what = f"this caller's client has not read {held / MIB:.0f} MiB of its answers"
            self._refuse(what, f"{SETTING}.per_caller", caller)
        if self._count >= self.total:
            what = f"the gateway holds {self._count / MIB:.0f} MiB of answers clients have not read"
            self._refuse(what, f"{SETTING}.total", caller)

    def reserve(self, caller: str, size: int) -> Reservation:
        """`check` once a call ran, and its answer's `size` charged at once, with no await between: answers ready at
        the same moment each see the others' (checked first and charged once written, 11 of 30 resumed 9 MB answers
        passed a 64 MiB bound together). Its refusal says the call ran (`ResultDropped`), as calling again runs it
        again."""
        try:
            self.check(caller)
        except LimitReached as refused:
            raise ResultDropped(refused) from None
        self.change(caller, size)
        return Reservation(self, caller, size)

    def _refuse(self, what: str, setting: str, caller: str) -> None:
        self._log.warning(setting, "refused a call: %s (%s), caller %s", what, setting, caller)
        raise LimitReached(what, setting, RETRY_AFTER)


class ResultDropped(LimitReached):
    """A call that ran, whose result is dropped rather than held: not "try again", which would run it again."""

    def __init__(self, refused: LimitReached) -> None:
        what = str(refused.error.message).split(f" ({refused.setting})")[0]
        MCPError.__init__(
            self,
            types.INTERNAL_ERROR,
            f"the call ran, but its result was dropped: {what} ({refused.setting}); read the answers already sent "
            "before calling again (calling again runs it again)",
            {"limit": refused.setting, "ran": True},
        )
        self.setting = refused.setting


class Reservation:
    """An answer's size, charged to its caller from the moment its result is ready until the connection that sends it
    takes the charge over (`AnswerHold.reserve`), or it is known that none will (`release`)."""

    __slots__ = ("_ledger", "caller", "size")

    def __init__(self, ledger: HeldAnswers | None, caller: str, size: int) -> None:
        self._ledger = ledger
        self.caller = caller
        self.size = size

    def release(self) -> None:
        """No longer charged here (a second call does nothing)."""
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            ledger.change(self.caller, -self.size)


class AnswerHold:
    """One connection's charge: the caller its last request was tagged with, and what the connection holds for its
    client: the bytes its transport has not sent, and those the SSE writer keeps (`RetainedChunks`)."""

    __slots__ = ("_caller", "_charged", "_closed", "_ledger", "_reserved", "_retained", "_unsent")

    def __init__(self) -> None:
        self._ledger: HeldAnswers | None = None
        self._caller: str | None = None
        self._unsent = 0
        self._retained = 0
        self._reserved = 0  # answers ready for the response being sent, not yet written (`reserve`)
        self._charged = 0  # what the ledger holds of this connection's for `_caller`
        self._closed = False

    def owner(self) -> tuple[HeldAnswers, str] | None:
        """The ledger and caller the connection's answers are charged to (None: never tagged)."""
        if self._ledger is None or self._caller is None:
            return None
        return self._ledger, self._caller

    def tag(self, ledger: HeldAnswers, caller: str) -> None:
        """The connection's answers are `caller`'s from now on (what it already holds moves with it)."""
        if ledger is self._ledger and caller == self._caller:
            return
        if self._ledger is not None and self._caller is not None and self._charged:
            self._ledger.change(self._caller, -self._charged)
            self._charged = 0
        self._ledger, self._caller = ledger, caller
        self._settle()

    def unsent(self, size: int) -> None:
        """The connection's transport holds `size` bytes its client has not taken (0: drained, or closed)."""
        self._unsent = size
        self._settle()

    def retained(self, size: int) -> None:
        """The response's writer waits to write `size` bytes (0: written, or the response ended)."""
        self._retained = size
        self._settle()

    def reserve(self, reservation: Reservation) -> None:
        """An answer of the response being sent on this connection: its reservation's charge is the connection's
        until the response ends (`unreserve`), counted once with the bytes it becomes; a closed connection sends
        nothing more, so it is only released."""
        if not self._closed and self.owner() is not None:
            self._reserved += reservation.size
        reservation.release()
        self._settle()

    def unreserve(self) -> None:
        """The response ended: what it was to send is written (in the unsent bytes), or dropped."""
        self._reserved = 0
        self._settle()

    def closed(self) -> None:
        """The connection is gone: it holds nothing, and takes no reservation from now on."""
        self._closed = True
        self._unsent = self._retained = self._reserved = 0
        self._settle()

    def _settle(self) -> None:
        # An event waiting to be written is in the transport's unsent bytes too: one answer, charged once; so is an
        # answer reserved for the response being written.
        held = max(self._unsent, self._retained, self._reserved)
        if self._ledger is None or self._caller is None or held == self._charged:
            return
        self._ledger.change(self._caller, held - self._charged)
        self._charged = held


def answer_hold(scope: object) -> AnswerHold | None:
    """The `AnswerHold` of the connection behind an ASGI scope (server/connections.py puts it there)."""
    hold = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    return hold if isinstance(hold, AnswerHold) else None


class RetainedChunks:
    """An ASGI `send` for an SSE response that charges each event while its write waits for the client (uvicorn
    returns once the transport drained below its high-water mark), freed once written: a client that does not read
    is charged each answer it left, one that reads (even slowly) about one answer at a time. Charging the event's
    text and bytes (twice its size) until the response ended refused a client reading four 9 MB answers at 3 MB/s."""

    def __init__(self, send: Send, hold: AnswerHold) -> None:
        self._send = send
        self._hold = hold

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body:
                self._hold.retained(len(body))
                try:
                    await self._send(message)
                finally:
                    self._hold.retained(0)
                return
        await self._send(message)


def resumption_refused(hold: AnswerHold, owner: tuple[HeldAnswers, str]) -> Response | None:
    """Tag a resuming GET's connection with the session's caller; its refusal (429, Retry-After) when that caller
    is past a bound. The GET passes no server middleware (`RequestsInFlight`): untagged, what it replayed to a client
    that did not read was charged to nobody (30 resumed 9 MB answers held ~700 MB)."""
    ledger, caller = owner
    hold.tag(ledger, caller)
    try:
        ledger.check(caller)
    except LimitReached as refused:
        error = {"code": refused.error.code, "message": refused.error.message, "data": refused.error.data}
        return JSONResponse(
            {"jsonrpc": "2.0", "id": None, "error": error},
            HTTPStatus.TOO_MANY_REQUESTS,
            headers={"Retry-After": f"{RETRY_AFTER:g}"},
        )
    return None


class WaitingAnswers:
    """stdio's held answers: the bytes of the write its client has not taken (`ClientOutput.unsent`) and the answers
    waiting behind it, each in its handler's task (the SDK writes one at a time). One client, one bound: `per_caller`.

    An answer is measured only while a write is still untaken (a reading client's answers go out without it), and
    only up to the room left (`json_size` stops there); past the bound it becomes the error naming it."""

    def __init__(self, per_caller: int, unsent: Callable[[], int]) -> None:
        self.per_caller = per_caller
        self._unsent = unsent
        self._waiting = 0
        self._log = ThrottledLog(logger)

    def held(self) -> int:
        return self._unsent() + self._waiting

    def check(self) -> None:
        """Raise `LimitReached` while the client leaves `per_caller` bytes or more of its answers untaken."""
        if (held := self.held()) >= self.per_caller:
            self._refuse(f"the client has not read {held / MIB:.0f} MiB of its answers")

    def refusal(self, request_id: types.RequestId) -> types.JSONRPCError | None:
        """A new call's error while the client leaves `per_caller` bytes or more of its answers unread."""
        try:
            self.check()
        except LimitReached as refused:
            return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=refused.error)
        return None

    def take(self, result: object) -> int:
        """Count an answer's result as waiting: its size (0 while no write is untaken), or `LimitReached` when it
        would pass the bound. `done(size)` once the SDK's writer took it."""
        if not self._unsent():
            return 0
        held = self.held()
        size = json_size(result, self.per_caller - held) if held < self.per_caller else None
        if size is None:
            self._refuse(f"the client has not read {held / MIB:.0f} MiB of its answers, and this one would pass it")
        self._waiting += size
        return size

    def done(self, size: int) -> None:
        self._waiting -= size

    def _refuse(self, what: str) -> NoReturn:
        self._log.warning("stdio", "refused a call: %s (%s.per_caller)", what, SETTING)
        raise LimitReached(what, f"{SETTING}.per_caller", RETRY_AFTER)
