"""Calls of 2026-07-28 clients that ask their client through `InputRequiredResult`, round by round.

A 2026-07-28 client has no back-channel. A server that needs input answers the call with an
`InputRequiredResult` (`input_requests` and an opaque `request_state`); the client retries the same call
with `input_responses` and that state. Most backends ask the older way: a standalone
`sampling/createMessage`, `elicitation/create` or `roots/list` request in the middle of a call, and they
wait for the answer. The gateway bridges the two:

- a tool call of a 2026-07-28 client that declared sampling, elicitation or roots runs as a
  `PendingCall` on a backend session of its own (the 2025-11-25 handshake, advertising exactly the
  capabilities that client declared), in the gateway's task group, under a random id; the session
  serves that one call and is closed with it (`spares.py` hides its start-up);
- a request the backend sends meanwhile is held, and the client's call is answered with an
  `InputRequiredResult` carrying it and a `request_state` that names the pending call (`state.py`);
- the retry hands the answers to the waiting backend requests and waits again, for the result or for
  the next question.

A pending call whose client does not come back within `timeouts.input` is cancelled at the backend and
dropped. A caller starting a call past `limits.max_pending_calls_per_caller` ends its own oldest waiting round
(a call, or a workflow run asking its user: one rule, routing/budget.py `Budget.admit`) instead of being refused;
the ended call's retry is told it expired. Past `server.max_pending_calls` a new call is still refused. Why not
one session per client, as for 2025-11-25 clients: nothing in a 2026-07-28 request
says which client sent it, and a session reused across clients would carry one client's roots and
answers into another's calls.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, TypeVar

import anyio
import anyio.abc
import mcp_types as types
from mcp.client.session import ClientRequestContext
from mcp.server.session import ServerSession
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from vmcp_opt.backends.connection import BackendConnection
from vmcp_opt.backends.session_pool import DedicatedSession, SessionPool
from vmcp_opt.health import CallClock, Guard
from vmcp_opt.routing.budget import Budget
from vmcp_opt.routing.round_trips.held import AnswerT, HeldQuestions
from vmcp_opt.routing.round_trips.owners import RoundOwners
from vmcp_opt.routing.round_trips.spares import SpareSessions
from vmcp_opt.routing.round_trips.state import PendingRound

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT", bound=BaseModel)


class PendingCall(HeldQuestions):
    """One backend call of a 2026-07-28 client, driven round by round by the client's retries (a `Waiting` round
    of its budget)."""

    what = "call"

    def __init__(
        self,
        trips: RoundTrips,
        caller: str,
        backend: BackendConnection,
        capabilities: types.ClientCapabilities,
        guard: Guard,
    ) -> None:
        super().__init__(trips.input_timeout)
        self.trips = trips
        self.caller = caller
        self.guard = guard
        self.backend = backend
        self.capabilities = capabilities
        self.clock = CallClock()
        self.session: DedicatedSession | None = None
        # The front request now waiting on this call (its progress and log messages go there; none when
        # another replica relays the retry here).
        self.driver: ServerSession | None = None
        self.progress: ProgressFnT | None = None

    def round(self) -> PendingRound:
        return PendingRound(self.id, self.trips.owners.replica)

    def discard(self) -> None:
        self.trips.discard(self)

    # --- the backend side ------------------------------------------------------------------------

    async def live(self, request: types.Request[Any, Any], result_type: type[BaseModel]) -> None:
        """Run the call, then keep its outcome until the client collects it or `timeouts.input` passes."""
        try:
            with self.lifetime:
                await self._call(request, result_type)
                await anyio.sleep_forever()
            if self.client_gone():
                logger.info(
                    "backend %s: a 2026-07-28 client did not come back within %gs for its call; cancelled",
                    self.backend.name,
                    self.trips.input_timeout,
                )
        finally:
            self.trips.discard(self)
            self.ended.set()

    async def _call(self, request: types.Request[Any, Any], result_type: type[BaseModel]) -> None:
        try:
            async with self.guard(self.backend.name, self.clock):
                with self.clock.paused():  # a process start is not the call's latency
                    self.session = await self.trips.spares.session_for(self)
                result = await self.session.request(
                    request, result_type, progress_callback=self._on_progress, timed=False
                )
            self.settle(result)
        except Exception as exc:  # handed to the client's waiting request
            self.settle(exc)
        finally:
            if self.session is not None:
                with anyio.CancelScope(shield=True):
                    await self.session.aclose()

    async def sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools:
        request = types.CreateMessageRequest(params=params)
        if params.tools:
            return await self._ask("sampling", request, types.CreateMessageResultWithTools)
        return await self._ask("sampling", request, types.CreateMessageResult)

    async def elicitation(self, context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return await self._ask("elicitation", types.ElicitRequest(params=params), types.ElicitResult)

    async def list_roots(self, context: ClientRequestContext) -> types.ListRootsResult:
        return await self._ask("roots", types.ListRootsRequest(), types.ListRootsResult)

    async def _ask(self, kind: str, request: types.InputRequest, answer_type: type[AnswerT]) -> AnswerT:
        """Hold the backend's request until a retry of the client's call brings the answer."""
        with self.clock.paused():
            return await self.hold(kind, request, answer_type)

    async def _on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        if self.progress is not None:
            await _quietly(self.progress(progress, total, message))

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        if self.driver is None:
            return
        with warnings.catch_warnings():  # deprecated in 2026-07-28, yet the per-request opt-in is honoured
            warnings.simplefilter("ignore")
            await _quietly(self.driver.send_log_message(params.level, params.data, params.logger))

    # --- the client side -------------------------------------------------------------------------

    async def drive(self, session: ServerSession | None, progress: ProgressFnT | None) -> BaseModel:
        """The call's result, or `InputRequired` with the questions the backend is waiting on."""
        self.driver, self.progress = session, progress
        try:
            return await self.next_round()
        finally:
            self.driver, self.progress = None, None


class RoundTrips:
    """The pending calls of 2026-07-28 clients, by id; at most `max_pending` at once."""

    def __init__(
        self,
        pool: SessionPool,
        *,
        max_pending: int,
        max_pending_per_caller: int,
        input_timeout: float,
        spares: bool = True,
        owners: RoundOwners | None = None,
    ) -> None:
        self.input_timeout = input_timeout
        self.spares = SpareSessions(pool, enabled=spares)
        # A pending call holds a backend session until its client answers or `timeouts.input` passes.
        self.budget = Budget(
            "calls waiting for their client's input",
            total=max_pending,
            per_caller=max_pending_per_caller,
            retry_after=input_timeout,
            total_setting="server.max_pending_calls",
            caller_setting="limits.max_pending_calls_per_caller",
        )
        self._calls: dict[str, PendingCall] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        # Replicas (sessions.store: redis): the rounds handed out name this replica, and a retry naming
        # another is relayed to it (owners.py).
        self.owners = owners or RoundOwners()
        self.owners.continues(PendingRound, self._continue_relayed)
        self.owners.holds(self)  # a stopping replica's drain waits for its pending calls (server/drain.py)

    def attach(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group
        self.spares.attach(task_group)

    def __len__(self) -> int:
        return len(self._calls)

    def discard(self, call: PendingCall) -> None:
        if self._calls.pop(call.id, None) is not None:
            self.budget.release(call.caller, call.id)
            self.owners.released()

    def stop(self) -> None:
        """Cancel every pending call and close the spares (the gateway is stopping; its task group waits)."""
        for call in list(self._calls.values()):
            call.lifetime.cancel()
        self.spares.stop()

    def backend_changed(self, backend: BackendConnection) -> None:
        self.spares.backend_changed(backend)

    async def start(
        self,
        session: ServerSession,
        caller: str,
        capabilities: types.ClientCapabilities,
        backend: BackendConnection,
        request: types.Request[Any, Any],
        result_type: type[ResultT],
        guard: Guard,
        progress: ProgressFnT | None,
    ) -> ResultT:
        """Run `request` as a pending call; its result, or `InputRequired` with the backend's questions."""
        if self._task_group is None:
            raise MCPError(types.INTERNAL_ERROR, "the gateway is not started")
        call = PendingCall(self, caller, backend, capabilities, guard)
        await self.budget.admit(call)
        self._calls[call.id] = call
        self._task_group.start_soon(call.live, request, result_type, name=f"round-trip:{backend.name}")
        return _expect(await call.drive(session, progress), result_type)

    async def resume(
        self,
        session: ServerSession | None,
        round_: PendingRound,
        responses: types.InputResponses | None,
        result_type: type[ResultT],
        progress: ProgressFnT | None,
    ) -> ResultT:
        """A retry: hand over the client's answers and wait for the result or the next questions."""
        call = self._calls.get(round_.call)
        if call is None and (expired := self.budget.expired(round_.call)) is not None:
            raise expired
        if call is None:
            raise MCPError(
                types.INVALID_PARAMS,
                "requestState names no pending call: it has finished, was cancelled, or its client did not "
                f"come back within {self.input_timeout:g}s; call again without requestState",
            )
        if call.driven:
            raise MCPError(types.INVALID_REQUEST, "this call is already being continued by another request")
        if call.outcome is None:  # a call that ended meanwhile (its backend gave up) has nothing to answer
            call.answer(responses)
        return _expect(await call.drive(session, progress), result_type)

    async def _continue_relayed(self, round_: PendingRound, responses: types.InputResponses | None) -> BaseModel:
        """A retry relayed by another replica (no front session here)."""
        return await self.resume(None, round_, responses, BaseModel, None)


def _expect(result: BaseModel, result_type: type[ResultT]) -> ResultT:
    if not isinstance(result, result_type):
        raise MCPError(
            types.INVALID_PARAMS, f"requestState belongs to another kind of request ({type(result).__name__})"
        )
    return result


async def _quietly(send: Any) -> None:
    try:
        await send
    except Exception as exc:  # a client gone away must not break the backend call
        logger.debug("round trip: message not delivered to the client: %r", exc)
