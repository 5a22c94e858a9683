"""Client requests in flight, bounded per caller and in total (`limits.requests_in_flight`).

A 2025-11-25 request runs in its session's task group, not in its POST: a client that sends a slow call and
closes the connection leaves the call running, so connections per address bound nothing, and one session sent
1,000 held calls to one backend at once, one short-lived connection after another. `RequestsInFlight`, a server
middleware ahead of every other, counts each request from its arrival at the session to its answer, per caller
(keyed as rate limits key callers: a verified subject, else the client's address, so new sessions or
credentials buy nothing) and in total; past either bound the request is answered at once with a JSON-RPC error
naming the setting (`LimitReached`), never dropped. It also tags the request's connection with its caller and
checks the bytes of answers the caller's client has left unread (`limits.held_answer_bytes`, server/held_answers.py),
before the call, and once its answer is ready, when it also charges the answer's size (server/reserved_answers.py).
Over HTTP each request also holds a stopping gateway's drain until its answer (server/drain.py `Drain.working`),
and lends that hold to the workflow steps it starts (`DRAIN_HOLD`): neither its POST's end (the client left)
nor a 2026-07-28 run going on in the background between rounds lets the stop cut their backend calls.

A 2025-11-25 call outlives its client's connection: a dropped stream is no cancel in that era (the client may resume
with Last-Event-ID), so the call runs on. Counted as in flight, a crashed agent host's calls refused the same caller,
restarted, until they ended (up to `timeouts.call`). So a call whose POST's connection is gone before its answer
(`Departure`, told by server/lazy_stream.py) moves from its caller's in-flight slots to its "left" ones: as many
again (`per_caller`), still within `total`. Past them the caller's oldest left call is cancelled (the backend hears
`notifications/cancelled`, the audit says `cancelled`, its answer is an error naming the setting): a caller that posts
and hangs up, over and over, holds at most twice `per_caller` calls. A left call stays left when its client resumes
it: it is answered on the resuming GET unless cancelled first.

stdio has one caller, which wrote 50,000 calls without reading an answer: the SDK started a task for each as
it read them (the gateway's RSS past 700 MB in 30 s, 1,700 calls at the backend at once). There a request past
`per_caller` unanswered (`InFlight`, server/stdio.py) gets the same error at once, and reading goes on: the
client's answers to the gateway's own questions and its cancellations, which the running calls may wait for,
must get through. A client that reads none of its answers fills the pipe, and then the gateway's writes wait.

Not counted: `initialize` and `ping`, answered at once, and `subscriptions/listen`, a stream held for as long
as the client wants it: over HTTP it takes one of its caller's `limits.max_streams_per_caller` instead (`streams`,
shared with the GET streams of server/sessions.py) for its life, or is refused at once with `LimitReached`; one
caller held 180 of them, which the in-flight bound never saw. Over stdio a `ping` is still a task
and an answer held until the client reads it: a client that wrote pings without reading grew the gateway past
400 MB in 30 s. There `InFlight.room` holds the reading of stdin while twice `per_caller` requests of any kind
are unanswered; the pings do not count against the calls' `per_caller`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError

from vmcp_opt.config.limits import RequestsInFlightConfig
from vmcp_opt.routing.budget import Budget
from vmcp_opt.server.admission import Admission
from vmcp_opt.server.drain import drain_of
from vmcp_opt.server.held_answers import HeldAnswers, answer_hold
from vmcp_opt.server.reserved_answers import answer_size, session_charges
from vmcp_opt.workflows.rounds import DRAIN_HOLD

SETTING = "limits.requests_in_flight"
PER_CALLER = f"{SETTING}.per_caller"
# Requests that hold nothing (answered at once) or that are streams, not calls.
LISTEN = "subscriptions/listen"
UNCOUNTED = frozenset({"initialize", "ping", LISTEN})
# List answers are built once for all who list at once and shared (server/list_cache.py): reserved per request,
# six concurrent lists of one large catalogue were refused as six answers (and measured in six threads) though one
# is held. They are charged as their bytes are written, as before reservations.
SHARED_ANSWERS = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list"})
# What a refused client is told to wait: a call in flight usually ends within a second or two.
RETRY_AFTER = 1.0
# The key in a session request's ASGI scope under which its POST's `Departure` is.
DEPARTURE_KEY = "vmcp.departure"


class Departure:
    """Whether a session request's POST connection ended before its answer, and who hears of it: set up by the POST
    (server/lazy_stream.py) before the request is handed on, so a departure before the call starts is not missed."""

    __slots__ = ("_listener", "gone")

    def __init__(self) -> None:
        self.gone = False
        self._listener: Callable[[], None] | None = None

    def left(self) -> None:
        if not self.gone:
            self.gone = True
            if self._listener is not None:
                self._listener()

    def listen(self, listener: Callable[[], None] | None) -> None:
        """`listener` is called once the client has left (at once if it already has); None: no one listens now."""
        self._listener = listener
        if self.gone and listener is not None:
            listener()


def departure_of(scope: object) -> Departure | None:
    departure = scope.get(DEPARTURE_KEY) if isinstance(scope, dict) else None
    return departure if isinstance(departure, Departure) else None


class _Call:
    """One counted call: the budget key its slot is under (None once freed) and the scope that cancels it."""

    __slots__ = ("caller", "cut", "slot")

    def __init__(self, caller: str, cut: anyio.CancelScope) -> None:
        self.caller = caller
        self.slot: str | None = caller
        self.cut = cut


class RequestsInFlight:
    """Server middleware: a slot per request for its caller while it runs, or `LimitReached` at once."""

    def __init__(
        self, config: RequestsInFlightConfig, admission: Admission, held: HeldAnswers, streams: Budget | None = None
    ) -> None:
        self._admission = admission
        self._held = held
        self._streams = streams  # listen streams held per caller (HTTP), with the GET streams
        self._budget = Budget(
            "requests in flight",
            total=config.total,
            per_caller=config.per_caller,
            retry_after=RETRY_AFTER,
            total_setting=f"{SETTING}.total",
            caller_setting=PER_CALLER,
        )
        self._left: dict[str, list[_Call]] = {}  # per caller, its calls whose client left, oldest first

    def __len__(self) -> int:
        return len(self._budget)

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.request_id is not None and ctx.method == LISTEN and self._streams is not None:
            return await self._hold_stream(self._streams, ctx, call_next)
        if ctx.request_id is None or ctx.method in UNCOUNTED:  # a notification, or nothing held
            return await call_next(ctx)
        key = self._admission.budget_key(ctx)
        scope = getattr(ctx.request, "scope", None)
        hold = answer_hold(scope)  # HTTP: the connection its answer goes out on
        if hold is not None:
            hold.tag(self._held, key)
        charges = session_charges(scope)  # a session's: its resumptions and GET stream are charged to `key` too
        if charges is not None:
            charges.owner = (self._held, key)
        self._held.check(key)
        self._budget.acquire(key)
        call = _Call(key, anyio.CancelScope())
        departure = departure_of(scope)
        try:
            with _holding_drain(scope), call.cut:
                if departure is not None:
                    departure.listen(lambda: self._leave(call))
                result = await call_next(ctx)
            if call.cut.cancelled_caught:
                raise _cut_off(self._budget.per_caller)
        finally:
            if departure is not None:
                departure.listen(None)
            self._forget(call)
        # Answers that came back while the client read none: refused here, dropped, rather than held too; the error
        # says the call ran (not "try again", which runs its side effects again). Checked and charged in one step.
        if ctx.method in SHARED_ANSWERS or (charges is None and hold is None):
            self._held.reserve(key, 0).release()  # the check alone: see SHARED_ANSWERS; stdio charges as it writes
            return result
        reservation = self._held.reserve(key, await answer_size(result, self._held.per_caller))
        if charges is not None:
            charges.place(str(ctx.request_id), reservation)  # its writer takes it over (server/reserved_answers.py)
        elif hold is not None:
            hold.reserve(reservation)  # answered on this connection, until its response ends
        return result

    def _leave(self, call: _Call) -> None:
        """The call's client left: its slot becomes one of its caller's left ones, the oldest of those cancelled
        when they are all taken. Synchronous: the slot moves with no other request between."""
        if call.slot != call.caller:
            return
        left = self._left.get(call.caller, [])
        if len(left) >= self._budget.per_caller:
            oldest = left[0]
            self._forget(oldest)
            oldest.cut.cancel()
        self._budget.release(call.caller)
        call.slot = _left_key(call.caller)
        self._budget.acquire(call.slot)  # within both bounds: one slot freed just now, one left slot free
        self._left.setdefault(call.caller, []).append(call)

    def _forget(self, call: _Call) -> None:
        """The call's slot freed (it ended, or it was cancelled as its caller's oldest left call)."""
        if call.slot is None:
            return
        if call.slot != call.caller:
            left = self._left[call.caller]
            left.remove(call)
            if not left:
                del self._left[call.caller]
        self._budget.release(call.slot)
        call.slot = None

    async def _hold_stream(
        self, streams: Budget, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """A listen stream holds one of its caller's streams for its life, or is refused (`LimitReached`) at once."""
        key = self._admission.budget_key(ctx)
        streams.acquire(key)
        try:
            return await call_next(ctx)
        finally:
            streams.release(key)


def _left_key(caller: str) -> str:
    # A space: no budget key has one ("address:…", "subject:…"), so a caller's left slots never mix with another's.
    return f"left {caller}"


def _cut_off(per_caller: int) -> MCPError:
    return MCPError(
        types.INTERNAL_ERROR,
        f"cancelled: its client left, and this caller left more calls running than {PER_CALLER} ({per_caller}) "
        "allows: the oldest is cancelled",
        {"limit": PER_CALLER},
    )


@contextlib.contextmanager
def _holding_drain(scope: Any) -> Iterator[None]:
    """The drain held while the request runs, and lent to the workflow steps it starts (their runs may outlive it)."""
    drain = drain_of(scope)
    if drain is None:  # stdio: its own wait (`InFlight.drained`)
        yield
        return
    lent = DRAIN_HOLD.set(drain.working)
    try:
        with drain.working():
            yield
    finally:
        DRAIN_HOLD.reset(lent)


class InFlight:
    """The client's requests not answered yet (counted by id: a client may reuse one), whether `most` of those
    `per_caller` bounds are, a wait for room below twice `most` of any kind, and a wait until there are none."""

    def __init__(self, most_wait: float, most: int) -> None:
        self.most_wait = most_wait
        self.most = most
        self.hold_at = 2 * most  # requests of any kind unanswered at which `room` waits
        self._ids: dict[types.RequestId, int] = {}  # id -> unanswered requests under it (a client may reuse one)
        self._unbounded: dict[types.RequestId, int] = {}  # id -> those of them `per_caller` does not bound (ping)
        self._count = 0  # the sum of `_ids`' counts, kept: it is read before every request
        self._unbounded_count = 0  # the sum of `_unbounded`'s counts
        self._none = anyio.Event()
        self._none.set()
        self._room: anyio.Event | None = None  # set once below `hold_at` again, while `room` waits
        self._given_up = False
        # The wait ended with requests still running: the SDK answers each "Connection closed" next.
        self.cut_off = False

    def __len__(self) -> int:
        return self._count

    def full(self) -> bool:
        return self._count - self._unbounded_count >= self.most and not self._given_up

    def started(self, request_id: types.RequestId, *, bounded: bool = True) -> None:
        """A request handed on; `bounded` False for one `per_caller` does not count (`ping`, `initialize`)."""
        self._ids[request_id] = self._ids.get(request_id, 0) + 1
        self._count += 1
        if not bounded:
            self._unbounded[request_id] = self._unbounded.get(request_id, 0) + 1
            self._unbounded_count += 1
        if self._none.is_set() and not self._given_up:
            self._none = anyio.Event()

    async def room(self) -> None:
        """Returns once fewer than `hold_at` requests of any kind are unanswered (or the wait was given up)."""
        while self._count >= self.hold_at and not self._given_up:
            self._room = anyio.Event()
            await self._room.wait()

    def give_up(self) -> None:
        """Stop waiting (a second signal): `drained` and `room` return now."""
        self._given_up = True
        self._none.set()
        if self._room is not None:
            self._room.set()

    def ended(self, request_id: types.RequestId | None) -> None:
        left = self._ids.get(request_id) if request_id is not None else None
        if request_id is None or left is None:
            return  # answered already (a cancelled request's late answer), or never counted
        _take_one(self._ids, request_id)
        self._count -= 1
        if request_id in self._unbounded:  # under a reused id, the ping is taken as answered first: it is quick
            _take_one(self._unbounded, request_id)
            self._unbounded_count -= 1
        if not self._count:
            self._none.set()
        if self._room is not None and self._count < self.hold_at:
            self._room.set()

    def ended_cancelled(self, request_id: str | int) -> None:
        """A request the client cancelled, whose id it may spell as a string ("7" for 7, as the SDK matches it)."""
        if request_id not in self._ids and isinstance(request_id, str) and request_id.lstrip("-").isdigit():
            request_id = int(request_id)
        self.ended(request_id)

    async def drained(self) -> None:
        """Returns once every request is answered, or after `most_wait` seconds."""
        with anyio.move_on_after(self.most_wait):
            await self._none.wait()
        self.cut_off = bool(self._ids)


def _take_one(counts: dict[types.RequestId, int], request_id: types.RequestId) -> None:
    left = counts[request_id]
    if left == 1:
        del counts[request_id]
    else:
        counts[request_id] = left - 1
