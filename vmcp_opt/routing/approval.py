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
# Tickets handed to 2026-07-28 clients and not yet answered; the oldest go first past this many.
TICKETS_KEPT = 4096


class NotApproved(Exception):
    """The user did not approve (declined, cancelled, or said no): the call did not run."""


class Approvals:
    def __init__(self, owners: RoundOwners | None = None) -> None:
        self._tickets: OrderedDict[str, str] = OrderedDict()  # ticket -> tool
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
        self._tickets[ticket] = tool
        if len(self._tickets) > TICKETS_KEPT:
            self._tickets.popitem(last=False)
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
        if self._tickets.pop(round_.ticket, None) != round_.tool:
            raise _used()
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
