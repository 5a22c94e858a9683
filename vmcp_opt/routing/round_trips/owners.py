"""Rounds held in one replica's memory, continued from any replica (`sessions.store: redis`).

Three kinds of round wait in the memory of the process that handed them out: a backend call asking its
client (`PendingRound`, pending.py), a workflow run asking its user (`WorkflowRound`,
vmcp_opt/workflows/rounds.py) and an approval question (`ApprovalRound`, routing/approval.py). Each names
its `owner`, the replica holding it (None: a single gateway). The registry of each kind tells
`RoundOwners` how to continue a retry of its rounds (`continues`) and asks it to relay a retry whose round
is held elsewhere (`relayed`). The `RoundRelay` (vmcp_opt/shared/round_relay.py) brings the retry to the
owner, whose `continue_relayed` hands it to the registry of its kind as a retry with no front session (the
continuation's progress and log messages are dropped); the answer — a result, the next
`InputRequiredResult` or an error — goes back the same way. One relay for every kind.

A stopping replica's drain (server/drain.py) waits, within `server.drain_timeout`, for the rounds held here
(`waiting`, `settled`): registries that hold rounds say so (`holds`) and tell when one leaves (`released`).
Without that, a replica stopped while its client was answering dropped the round it had just handed out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sized
from typing import Any, Protocol, TypeVar

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from vmcp_opt.routing.round_trips.state import ApprovalRound, InputRequired, PendingRound, Round, WorkflowRound

HeldRound = PendingRound | WorkflowRound | ApprovalRound
ResultT = TypeVar("ResultT", bound=BaseModel)
RoundT = TypeVar("RoundT", PendingRound, WorkflowRound, ApprovalRound)
Continuation = Callable[[RoundT, types.InputResponses | None], Awaitable[BaseModel]]


class RoundRelay(Protocol):
    """Hands a retry to the replica holding its round and waits for the answer (vmcp_opt/shared/round_relay.py)."""

    async def ask(
        self, round_: HeldRound, responses: types.InputResponses | None
    ) -> types.InputRequiredResult | dict[str, Any]:
        """The round's next `InputRequiredResult`, or its result as sent on the wire; `MCPError` when the
        owner refused the retry or is gone."""
        ...


class RoundOwners:
    """Which replica this is (stamped into every round handed out) and how each kind of round continues."""

    def __init__(self) -> None:
        self.replica: str | None = None
        self.relay: RoundRelay | None = None  # set with `replica` when rounds are shared (server/shared_sessions.py)
        self._continuations: dict[type[HeldRound], Continuation[Any]] = {}
        self._registries: list[Sized] = []  # each holds rounds waiting for their client (its length: how many)
        self._relaying = 0  # retries relayed here being continued now
        self._changed: anyio.Event | None = None  # set when a round leaves or a relayed retry ends (`settled`)

    def continues(self, kind: type[RoundT], continuation: Continuation[RoundT]) -> None:
        """How a retry of a round of `kind` held here goes on when another replica relays it."""
        self._continuations[kind] = continuation

    def holds(self, registry: Sized) -> None:
        """`registry`'s rounds (as many as its length) count in `waiting`; it calls `released` when one leaves."""
        self._registries.append(registry)

    def released(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def waiting(self) -> int:
        """Rounds held here for a client to answer, and relayed retries being continued here."""
        return sum(len(registry) for registry in self._registries) + self._relaying

    async def settled(self) -> None:
        """Until `waiting` is 0 (unbounded: the drain bounds it)."""
        while self.waiting():
            self._changed = anyio.Event()
            await self._changed.wait()

    def elsewhere(self, round_: HeldRound) -> bool:
        return round_.owner is not None and round_.owner != self.replica

    async def relayed(
        self, round_: HeldRound, responses: types.InputResponses | None, result_type: type[ResultT]
    ) -> ResultT:
        """A retry of a round held by another replica: continued there, its answer passed on."""
        if self.relay is None:
            raise MCPError(types.INVALID_PARAMS, "requestState names a call pending on another gateway")
        answer = await self.relay.ask(round_, responses)
        if isinstance(answer, types.InputRequiredResult):
            raise InputRequired(answer)
        return result_type.model_validate(answer, by_name=False)

    async def continue_relayed(self, round_: Round, responses: types.InputResponses | None) -> BaseModel:
        """The owner's side of `relayed`: the next `InputRequiredResult` or the result; `MCPError` otherwise."""
        continuation = None
        if isinstance(round_, HeldRound) and not self.elsewhere(round_):
            continuation = self._continuations.get(type(round_))
        if continuation is None:
            raise MCPError(types.INVALID_PARAMS, "requestState names no call held by this replica")
        self._relaying += 1
        try:
            return await continuation(round_, responses)
        except InputRequired as exc:
            return exc.result
        finally:
            self._relaying -= 1
            self.released()
