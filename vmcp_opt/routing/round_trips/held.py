"""Work that runs in the background while a 2026-07-28 client answers its questions, round by round.

Two kinds hold questions this way: a backend call that asks its client something (`pending.py`'s
`PendingCall`: the backend's sampling, elicitation or roots requests) and a workflow run with an
elicitation step of its own (`vmcp_opt/workflows/rounds.py`). Both are `HeldQuestions`: the work asks
(`hold`), the client's call is answered with an `InputRequiredResult` listing the open questions and a
`request_state` naming the work (`next_round`), and the retry hands the answers over (`answer`) and waits
again, for the outcome or for the next questions. The subclass says what the state names (`round`) and
how it leaves its registry (`discard`).
"""

from __future__ import annotations

import itertools
import math
import secrets
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError

from vmcp_opt.routing.round_trips.state import InputRequired, Round, encode_round

AnswerT = TypeVar("AnswerT", bound=BaseModel)


@dataclass(eq=False)
class _Ask:
    request: types.InputRequest
    answer_type: type[BaseModel]
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: BaseModel | None = None


class HeldQuestions:
    """Questions of background work, waiting for a 2026-07-28 client's retries; `outcome` once it is done."""

    def __init__(self, input_timeout: float) -> None:
        self.id = secrets.token_urlsafe(32)
        self.input_timeout = input_timeout
        self.asks: dict[str, _Ask] = {}
        self.outcome: BaseModel | Exception | None = None
        # Cancelled when the outcome is collected or the work abandoned; the deadline is the client's.
        self.lifetime = anyio.CancelScope()
        self._changed = anyio.Event()
        self._keys = itertools.count(1)
        # As a round of the pending-call budget (routing/budget.py `Waiting`), which a newer one may end:
        self.driven = False  # a request of its client is waiting on it now (`next_round`)
        self.idle_since = anyio.current_time()  # when a request last stopped waiting on it
        self.ended = anyio.Event()  # set by its `live` once its work has stopped

    def round(self) -> Round:
        """What the `request_state` of its `InputRequiredResult` names."""
        raise NotImplementedError

    def discard(self) -> None:
        """Leave the registry that finds it by id."""
        raise NotImplementedError

    def settle(self, outcome: BaseModel | Exception) -> None:
        self.outcome = outcome
        self._notify()

    def client_gone(self) -> bool:
        """Whether the work was cancelled because its client did not come back within `input_timeout`."""
        return self.lifetime.cancelled_caught and self.lifetime.deadline <= anyio.current_time()

    async def hold(self, kind: str, request: types.InputRequest, answer_type: type[AnswerT]) -> AnswerT:
        """Hold a question until a retry of the client's call brings the answer."""
        key = f"{kind}-{next(self._keys)}"
        ask = _Ask(request, answer_type)
        self.asks[key] = ask
        self._notify()
        try:
            await ask.answered.wait()
        finally:
            del self.asks[key]
        answer = ask.answer
        assert isinstance(answer, answer_type)
        return answer

    def answer(self, responses: types.InputResponses | None) -> None:
        """Hand a retry's answers to the questions they answer; all or none of them."""
        given = responses or {}
        unknown = sorted(key for key in given if key not in self.asks or self.asks[key].answer is not None)
        if unknown:
            open_keys = sorted(key for key, ask in self.asks.items() if ask.answer is None)
            raise MCPError(
                types.INVALID_PARAMS,
                f"inputResponses {unknown} answer no open request of this call (open: {open_keys})",
            )
        answers: dict[str, BaseModel] = {}
        for key, response in given.items():
            answer_type = self.asks[key].answer_type
            try:
                answers[key] = answer_type.model_validate(
                    response.model_dump(by_alias=True, mode="json", exclude_none=True), by_name=False
                )
            except ValidationError:
                raise MCPError(
                    types.INVALID_PARAMS, f"inputResponses[{key!r}] is not a {answer_type.__name__}"
                ) from None
        for key, answer in answers.items():
            self.asks[key].answer = answer
            self.asks[key].answered.set()

    def end(self) -> None:
        """Ended to make room for a newer round of its caller (`Budget.admit`): its work is cancelled."""
        self._collected()

    async def next_round(self) -> BaseModel:
        """The outcome, or `InputRequired` with the open questions; a client giving up cancels the work."""
        self.lifetime.deadline = math.inf
        self.driven = True
        try:
            while True:
                if self.outcome is not None:
                    self._collected()
                    if isinstance(self.outcome, Exception):
                        raise self.outcome
                    return self.outcome
                questions: types.InputRequests = {k: a.request for k, a in self.asks.items() if a.answer is None}
                if questions:
                    self.lifetime.deadline = anyio.current_time() + self.input_timeout
                    state = encode_round(self.round())
                    raise InputRequired(types.InputRequiredResult(input_requests=questions, request_state=state))
                changed = self._changed
                await changed.wait()
        except anyio.get_cancelled_exc_class():
            self._collected()  # the client gave up on the call: so does the work
            raise
        finally:
            self.driven, self.idle_since = False, anyio.current_time()

    def _collected(self) -> None:
        self.discard()
        self.lifetime.cancel()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
