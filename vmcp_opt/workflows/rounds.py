"""Workflow runs that ask a 2026-07-28 client something: `InputRequiredResult` rounds.

A 2026-07-28 client has no back-channel: a workflow that asks its user (an elicitation step) cannot
send `elicitation/create` mid-call. Such a run starts as a `PendingRun` in the gateway's task group under a
random id. When a step asks, the client's call is answered with an `InputRequiredResult` carrying the
question and a sealed `request_state` naming the run (`WorkflowRound`); the client's retry of the same
call hands the answer over and waits again, for the result or for the next question. The run goes on in
the background between rounds, so steps that do not wait for the answer keep running. A run whose client
does not come back within `timeouts.input` is cancelled, and so is one whose client gives up on a round.

The same shape as the backend calls of `routing/round_trips/pending.py`, but for questions the gateway
asks itself: there is no backend session to hold, and the answer goes to a step, not to a backend.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from vmcp_opt.routing.round_trips import InputRequired, WorkflowRound, encode_round

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Question:
    request: types.ElicitRequest
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: types.ElicitResult | None = None


class PendingRun:
    """One workflow run of a 2026-07-28 client, driven round by round by the client's retries."""

    def __init__(self, rounds: WorkflowRounds) -> None:
        self.id = secrets.token_urlsafe(32)
        self.rounds = rounds
        self.questions: dict[str, _Question] = {}
        self.outcome: types.CallToolResult | None = None
        # The front request now waiting on this run: its progress token, if any.
        self.progress: ProgressFnT | None = None
        self.driven = False
        self.lifetime = anyio.CancelScope()
        self._changed = anyio.Event()
        self._keys = itertools.count(1)

    async def live(self, run: Callable[[PendingRun], Awaitable[types.CallToolResult]]) -> None:
        try:
            with self.lifetime:
                self.outcome = await run(self)
                self._notify()
                await anyio.sleep_forever()  # until collected, or the client's deadline passes
            if self.lifetime.cancelled_caught and self.lifetime.deadline <= anyio.current_time():
                logger.info(
                    "a workflow's 2026-07-28 client did not come back within %gs; run cancelled",
                    self.rounds.input_timeout,
                )
        finally:
            self.rounds.discard(self)

    async def ask(self, message: str, schema: dict[str, Any]) -> dict[str, Any]:
        """An elicitation step's question: held until a retry of the client's call brings the answer."""
        key = f"elicitation-{next(self._keys)}"
        params = types.ElicitRequestFormParams(message=message, requested_schema=schema)  # type: ignore[arg-type]
        question = _Question(types.ElicitRequest(params=params))
        self.questions[key] = question
        self._notify()
        try:
            await question.answered.wait()
        finally:
            del self.questions[key]
        assert question.answer is not None
        return question.answer.model_dump(mode="json", exclude_none=True, include={"action", "content"})

    def answer(self, responses: types.InputResponses | None) -> None:
        given = responses or {}
        open_keys = sorted(key for key, q in self.questions.items() if q.answer is None)
        unknown = sorted(key for key in given if key not in open_keys)
        if unknown:
            raise MCPError(
                types.INVALID_PARAMS,
                f"inputResponses {unknown} answer no open question of this workflow (open: {open_keys})",
            )
        answers: dict[str, types.ElicitResult] = {}
        for key, response in given.items():
            try:
                raw = response.model_dump(by_alias=True, mode="json", exclude_none=True)
                answers[key] = types.ElicitResult.model_validate(raw, by_name=False)
            except ValidationError:
                raise MCPError(types.INVALID_PARAMS, f"inputResponses[{key!r}] is not an ElicitResult") from None
        for key, answer in answers.items():
            self.questions[key].answer = answer
            self.questions[key].answered.set()

    async def next_round(self, progress: ProgressFnT | None) -> types.CallToolResult:
        """The run's result, or `InputRequired` with the questions it is waiting on."""
        self.driven, self.progress = True, progress
        self.lifetime.deadline = math.inf
        try:
            while True:
                if self.outcome is not None:
                    self._collected()
                    return self.outcome
                open_questions: types.InputRequests = {
                    k: q.request for k, q in self.questions.items() if q.answer is None
                }
                if open_questions:
                    self.lifetime.deadline = anyio.current_time() + self.rounds.input_timeout
                    state = encode_round(WorkflowRound(self.id))
                    raise InputRequired(types.InputRequiredResult(input_requests=open_questions, request_state=state))
                changed = self._changed
                await changed.wait()
        except anyio.get_cancelled_exc_class():
            self._collected()  # the client gave up on the call: so does the run
            raise
        finally:
            self.driven, self.progress = False, None

    def _collected(self) -> None:
        self.rounds.discard(self)
        self.lifetime.cancel()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class WorkflowRounds:
    """The pending workflow runs, by id; at most `max_pending` at once."""

    def __init__(self, *, max_pending: int, input_timeout: float) -> None:
        self.max_pending = max_pending
        self.input_timeout = input_timeout
        self._runs: dict[str, PendingRun] = {}
        self._task_group: anyio.abc.TaskGroup | None = None

    def attach(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group

    def stop(self) -> None:
        for run in list(self._runs.values()):
            run.lifetime.cancel()

    def discard(self, run: PendingRun) -> None:
        self._runs.pop(run.id, None)

    def __len__(self) -> int:
        return len(self._runs)

    async def start(
        self, run: Callable[[PendingRun], Awaitable[types.CallToolResult]], progress: ProgressFnT | None
    ) -> types.CallToolResult:
        if self._task_group is None:
            raise MCPError(types.INTERNAL_ERROR, "the gateway is not started")
        if len(self._runs) >= self.max_pending:
            raise MCPError(
                types.INTERNAL_ERROR,
                f"the gateway already holds {self.max_pending} calls that may ask their client for input "
                "(server.max_pending_calls); try again later",
            )
        pending = PendingRun(self)
        self._runs[pending.id] = pending
        self._task_group.start_soon(pending.live, run, name="workflow-round-trip")
        return await pending.next_round(progress)

    async def resume(
        self, round_: WorkflowRound, responses: types.InputResponses | None, progress: ProgressFnT | None
    ) -> types.CallToolResult:
        pending = self._runs.get(round_.run)
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
        return await pending.next_round(progress)
