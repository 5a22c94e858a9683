"""Approval before risky calls: the policy says a call needs the user's confirmation, the client asks them.

A `Decision` with `approval` (e.g. a Cedar `@approval("…")` policy that matched) makes the router call
`Approvals.confirm` before the tool runs:
- a 2025-11-25 session with a back channel is sent `elicitation/create` (a form with one boolean) on the
  call's own stream, and the call waits for the answer;
- a 2026-07-28 client gets an `InputRequiredResult` holding the same form and a sealed, single-use ticket
  for this tool; its retry carries the answer. The ticket is kept by the replica that asked; a retry
  landing on another replica redeems it there through the round relay
  (vmcp_opt/routing/round_trips/owners.py) and runs the call itself;
- a client that did not declare elicitation gets a clear refusal: nobody can approve.
The call runs only on an explicit accept with `approve: true`; a decline, a cancel or `false` is an error
result saying so. Every decision is logged with the caller and its subject.

Tickets are memory a client makes the gateway keep without answering: at most `TICKETS_PER_CALLER` per caller
(`caller_key`: the verified subject, else the address), its own oldest displaced first, and `TICKETS_KEPT` in
all, past which the caller holding most loses its oldest. One caller's flood cannot displace another's ticket.
A retry whose ticket is gone is told so ("call again"), unlike one whose ticket was used.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections import OrderedDict

import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from vmcp_opt.auth import Caller
from vmcp_opt.auth.caller import caller_key
from vmcp_opt.display import shorten
from vmcp_opt.routing.exchange import Exchange
from vmcp_opt.routing.round_trips import ApprovalRound, InputRequired, RoundOwners
from vmcp_opt.routing.round_trips.state import encode_round

logger = logging.getLogger(__name__)

ANSWER_KEY = "vmcp_approval"
SCHEMA: types.ElicitRequestedSchema = {
    "type": "object",
    "properties": {"approve": {"type": "boolean", "title": "Run this call", "default": False}},
    "required": ["approve"],
}
# Tickets handed to 2026-07-28 clients and not yet answered, in all; past it the caller holding most loses its oldest.
TICKETS_KEPT = 4096
# Unanswered tickets of one caller; past it its own oldest goes. Far more approvals than a user answers at once.
TICKETS_PER_CALLER = 64
# Used tickets remembered, so that a second use is told "already used", not "expired".
USED_KEPT = 4096


class NotApproved(Exception):
    """The user did not approve (declined, cancelled, or said no): the call did not run."""


@dataclasses.dataclass(frozen=True)
class Ticket:
    tool: str
    holder: str  # `caller_key` of the caller it was handed to


class Tickets:
    """Unanswered approval tickets, bounded per caller and in total (see the module's docstring)."""

    def __init__(self, *, total: int = TICKETS_KEPT, per_caller: int = TICKETS_PER_CALLER) -> None:
        self.total = total
        self.per_caller = per_caller
        self._tickets: dict[str, Ticket] = {}
        self._held: dict[str, OrderedDict[str, None]] = {}  # caller key -> its tickets, oldest first
        self._used: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    def keep(self, ticket: str, tool: str, holder: str) -> None:
        mine = self._held.get(holder)
        if mine is not None and len(mine) >= self.per_caller:
            self._drop(next(iter(mine)))
        elif len(self._tickets) >= self.total:
            most = max(self._held.values(), key=len)
            self._drop(next(iter(most)))
        self._tickets[ticket] = Ticket(tool, holder)
        self._held.setdefault(holder, OrderedDict())[ticket] = None

    def use(self, ticket: str, tool: str) -> None:
        """Spend `ticket` for `tool`, or raise the `MCPError` that says why it cannot be."""
        held = self._tickets.get(ticket)
        if held is None:
            raise _used() if ticket in self._used else _gone()
        self._drop(ticket)
        self._used[ticket] = None
        if len(self._used) > USED_KEPT:
            self._used.popitem(last=False)
        if held.tool != tool:
            raise _used()

    def _drop(self, ticket: str) -> None:
        held = self._tickets.pop(ticket)
        mine = self._held[held.holder]
        del mine[ticket]
        if not mine:
            del self._held[held.holder]


class Approvals:
    def __init__(self, owners: RoundOwners | None = None) -> None:
        self._tickets = Tickets()
        # Replicas: a ticket names the replica holding it; an answer landing elsewhere redeems it there.
        self.owners = owners or RoundOwners()
        self.owners.continues(ApprovalRound, self._redeem_relayed)

    async def confirm(self, caller: Caller, exchange: Exchange, tool: str, message: str) -> Exchange:
        """The exchange to run the approved call with; `NotApproved`, `InputRequired` or an `MCPError`."""
        prompt = f"Approve the call of tool '{shorten(tool)}'? {message}".strip()
        if isinstance(exchange.round, ApprovalRound):
            await self._redeem(exchange.round, tool)
            return self._answered(caller, exchange, tool)
        capabilities = caller.capabilities
        if capabilities is None or capabilities.elicitation is None:
            _record(caller, tool, "refused: the client cannot ask the user")
            raise MCPError(
                types.INVALID_REQUEST,
                f"tool '{shorten(tool)}' needs the user's approval ({message}), and this client cannot ask for it "
                "(it does not support elicitation)",
            )
        if caller.back_channel and exchange.session is not None:
            result = await exchange.session.elicit_form(prompt, SCHEMA, related_request_id=exchange.request_id)
            return self._decided(caller, exchange, tool, result)
        ticket = secrets.token_urlsafe(12)
        self._tickets.keep(ticket, tool, caller_key(caller))
        question = types.ElicitRequest(params=types.ElicitRequestFormParams(message=prompt, requested_schema=SCHEMA))
        state = encode_round(ApprovalRound(tool, ticket, self.owners.replica))
        raise InputRequired(types.InputRequiredResult(input_requests={ANSWER_KEY: question}, request_state=state))

    async def _redeem(self, round_: ApprovalRound, tool: str) -> None:
        """Use up the ticket, here or on the replica that handed it out; the call then runs here."""
        if round_.tool != tool:
            raise _used()
        if self.owners.elsewhere(round_):
            await self.owners.relayed(round_, None, types.EmptyResult)
        else:
            await self._redeem_relayed(round_, None)

    async def _redeem_relayed(self, round_: ApprovalRound, responses: types.InputResponses | None) -> types.EmptyResult:
        self._tickets.use(round_.ticket, round_.tool)
        return types.EmptyResult()

    def _answered(self, caller: Caller, exchange: Exchange, tool: str) -> Exchange:
        raw = (exchange.input_responses or {}).get(ANSWER_KEY)
        try:
            answer = types.ElicitResult.model_validate(
                raw.model_dump(by_alias=True, mode="json", exclude_none=True) if raw is not None else {},
                by_name=False,
            )
        except ValidationError:
            _record(caller, tool, "refused: no answer")
            raise NotApproved(f"tool '{shorten(tool)}' was not run: the approval was not answered") from None
        return self._decided(caller, exchange, tool, answer)

    def _decided(self, caller: Caller, exchange: Exchange, tool: str, answer: types.ElicitResult) -> Exchange:
        approved = answer.action == "accept" and (answer.content or {}).get("approve") is True
        outcome = (
            "approved"
            if approved
            else {"accept": "not approved", "decline": "declined"}.get(answer.action, "cancelled")
        )
        _record(caller, tool, outcome)
        if not approved:
            raise NotApproved(f"tool '{shorten(tool)}' was not run: the user {outcome} it")
        return dataclasses.replace(exchange, round=None, input_responses=None)


def _record(caller: Caller, tool: str, outcome: str) -> None:
    logger.info(
        "approval of %s for %s (%s): %s",
        tool,
        caller.id,
        caller.subject or "no subject",
        outcome,
        extra={"caller": caller.id, "subject": caller.subject, "tool": tool, "approval": outcome},
    )


def _used() -> MCPError:
    return MCPError(types.INVALID_PARAMS, "this approval is for another call, or was already used")


def _gone() -> MCPError:
    return MCPError(types.INVALID_PARAMS, "this approval expired or was displaced by newer ones: call again")
