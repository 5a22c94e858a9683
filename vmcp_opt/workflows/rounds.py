"""Workflow runs that ask a 2026-07-28 client something: `InputRequiredResult` rounds.

A 2026-07-28 client has no back-channel: a workflow that asks its user (an elicitation step) cannot
send `elicitation/create` mid-call. Such a run starts as a `PendingRun` in the gateway's task group under a
random id. When a step asks, the client's call is answered with an `InputRequiredResult` carrying the
question and a sealed `request_state` naming the run (`WorkflowRound`); the client's retry of the same
call hands the answer over and waits again, for the result or for the next question. The run goes on in
the background between rounds, so steps that do not wait for the answer keep running. A run whose client
does not come back within `timeouts.input` is cancelled, and so is one whose client gives up on a round, and
one that waited longest for its client when that caller starts a call or run past
`limits.max_pending_calls_per_caller` (a client cannot say its user closed the dialog: routing/budget.py
`Budget.admit`, one rule for runs and backend calls; its steps are cancelled, its retry told it expired).
Its round names the replica holding it; a retry landing on another replica is relayed there
(vmcp_opt/routing/round_trips/owners.py), so the run goes on where it lives.

A stopping gateway's drain waits for the backend calls such a run makes between rounds, when no request of its
client is open: each step call holds `DRAIN_HOLD` (`drain_hold`), which the HTTP server sets for every client
request (server/in_flight.py) and the run's task inherits from the request that started it. The drain does not
wait for a run that only waits for its client's answer.

The questions are held as for the backend calls of `routing/round_trips/pending.py` (both are
`HeldQuestions`), but the gateway asks them itself: there is no backend session to hold, and the answer
goes to a step, not to a backend.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from vmcp_opt.routing.budget import Budget
from vmcp_opt.routing.round_trips import InputRequired, RoundOwners, WorkflowRound
from vmcp_opt.routing.round_trips.held import HeldQuestions
from vmcp_opt.routing.round_trips.state import decode_round

logger = logging.getLogger(__name__)

# How a step call holds a stopping gateway's drain (server/drain.py `Drain.working`): set per client request by
# server/in_flight.py; unset over stdio and in `vmcp workflow run`, which have no drain.
DRAIN_HOLD: ContextVar[Callable[[], AbstractContextManager[None]] | None] = ContextVar("drain_hold", default=None)


def drain_hold() -> AbstractContextManager[None]:
    """Held around a step's backend call: a run in the background between rounds has no request that holds it."""
    hold = DRAIN_HOLD.get()
    return hold() if hold is not None else contextlib.nullcontext()


class PendingRun(HeldQuestions):
    """One workflow run of a 2026-07-28 client, driven round by round by the client's retries (a `Waiting` round
    of the pending-call budget)."""

    what = "workflow run"

    def __init__(self, rounds: WorkflowRounds, caller: str) -> None:
        super().__init__(rounds.input_timeout)
        self.rounds = rounds
        self.caller = caller  # whose slot of the pending-call budget it holds
        # The front request now waiting on this run: its progress token, if any.
        self.progress: ProgressFnT | None = None

    def round(self) -> WorkflowRound:
        return WorkflowRound(self.id, self.rounds.owners.replica)

    def discard(self) -> None:
        self.rounds.discard(self)

    async def live(self, run: Callable[[PendingRun], Awaitable[types.CallToolResult]]) -> None:
        try:
            with self.lifetime:
                self.settle(await run(self))
                await anyio.sleep_forever()  # until collected, or the client's deadline passes
            if self.client_gone():
                logger.info(
                    "a workflow's 2026-07-28 client did not come back within %gs; run cancelled", self.input_timeout
                )
        finally:
            self.rounds.discard(self)
            self.ended.set()

    async def ask(self, message: str, schema: dict[str, Any]) -> dict[str, Any]:
        """An elicitation step's question: held until a retry of the client's call brings the answer."""
        params = types.ElicitRequestFormParams(message=message, requested_schema=schema)  # type: ignore[arg-type]
        answer = await self.hold("elicitation", types.ElicitRequest(params=params), types.ElicitResult)
        return answer.model_dump(mode="json", exclude_none=True, include={"action", "content"})

    async def drive(self, progress: ProgressFnT | None) -> types.CallToolResult:
        """The run's result, or `InputRequired` with the questions it is waiting on."""
        self.progress = progress
        try:
            result = await self.next_round()
        finally:
            self.progress = None
        assert isinstance(result, types.CallToolResult)
        return result


class WorkflowRounds:
    """The pending workflow runs, by id. Each holds a slot of `budget`: the gateway passes the budget of
    its backend round trips (routing/round_trips/pending.py), so calls and runs waiting for a client's
    input share `server.max_pending_calls` and `limits.max_pending_calls_per_caller`."""

    def __init__(
        self,
        *,
        max_pending: int,
        input_timeout: float,
        owners: RoundOwners | None = None,
        budget: Budget | None = None,
        max_pending_per_caller: int | None = None,
    ) -> None:
        self.max_pending = max_pending
        self.input_timeout = input_timeout
        if budget is None:  # (not `budget or`: an empty Budget has length 0)
            budget = Budget(
                "calls waiting for their client's input",
                total=max_pending,
                per_caller=max_pending_per_caller or max_pending,
                retry_after=input_timeout,
                total_setting="server.max_pending_calls",
                caller_setting="limits.max_pending_calls_per_caller",
            )
        self.budget = budget
        self._runs: dict[str, PendingRun] = {}
        self._emptied: anyio.Event | None = None  # set when the last run held here is discarded (`ended`)
        self._task_group: anyio.abc.TaskGroup | None = None
        # Replicas: a retry of a run held by another replica is relayed there, one held here relayed back.
        self.owners = owners or RoundOwners()
        self.owners.continues(WorkflowRound, self._continue_relayed)
        self.owners.holds(self)  # a stopping replica's drain waits for its runs (server/drain.py)

    def attach(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group

    def stop(self) -> None:
        for run in list(self._runs.values()):
            run.lifetime.cancel()

    async def ended(self) -> None:
        """Once no run is held here: each `stop` cancelled has written its end (the gateway's stop waits, bounded)."""
        while self._runs:
            self._emptied = anyio.Event()
            await self._emptied.wait()

    def discard(self, run: PendingRun) -> None:
        if self._runs.pop(run.id, None) is not None:
            self.budget.release(run.caller, run.id)
            self.owners.released()
        if not self._runs and self._emptied is not None:
            self._emptied.set()

    def abandon(self, asked: InputRequired) -> None:
        """A question that will reach no client (a workflow step caught it): if a run held here asked it, the run
        is cancelled and its pending slot freed now, not after `input_timeout`."""
        try:
            round_ = decode_round(asked.result.request_state or "")
        except MCPError:
            return
        pending = self._runs.get(round_.run) if isinstance(round_, WorkflowRound) else None
        if pending is not None:
            pending.lifetime.cancel()
            self.discard(pending)

    def __len__(self) -> int:
        return len(self._runs)

    async def start(
        self,
        run: Callable[[PendingRun], Awaitable[types.CallToolResult]],
        progress: ProgressFnT | None,
        caller: str,
    ) -> types.CallToolResult:
        """`LimitReached` (naming the setting) when the gateway holds as many as it may, or every one `caller` may
        hold is a round in progress; at the caller's cap, its longest-idle round is ended instead."""
        if self._task_group is None:
            raise MCPError(types.INTERNAL_ERROR, "the gateway is not started")
        pending = PendingRun(self, caller)
        await self.budget.admit(pending)
        self._runs[pending.id] = pending
        self._task_group.start_soon(pending.live, run, name="workflow-round-trip")
        return await pending.drive(progress)

    async def resume(
        self, round_: WorkflowRound, responses: types.InputResponses | None, progress: ProgressFnT | None
    ) -> types.CallToolResult:
        if self.owners.elsewhere(round_):
            return await self.owners.relayed(round_, responses, types.CallToolResult)
        pending = self._runs.get(round_.run)
        if pending is None and (expired := self.budget.expired(round_.run)) is not None:
            raise expired
        if pending is None:
            raise MCPError(
                types.INVALID_PARAMS,
                "requestState names no pending workflow run: it has finished, was cancelled, or its client did "
                f"not come back within {self.input_timeout:g}s; call again without requestState",
            )
        if pending.driven:
            raise MCPError(types.INVALID_REQUEST, "this workflow run is already being continued by another request")
        if pending.outcome is None:
            pending.answer(responses)
        return await pending.drive(progress)

    async def _continue_relayed(self, round_: WorkflowRound, responses: types.InputResponses | None) -> BaseModel:
        """A retry relayed by another replica (no front request here: the run's progress is dropped)."""
        return await self.resume(round_, responses, None)
