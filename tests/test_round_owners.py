"""`RoundOwners`: which registry continues a relayed retry, and what a round names once sealed."""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from vmcp_opt.routing.round_trips import (
    ApprovalRound,
    BackendRound,
    InputRequired,
    PendingRound,
    Round,
    RoundOwners,
    WorkflowRound,
    encode_round,
)
from vmcp_opt.routing.round_trips.state import decode_round


def owners_on(replica: str) -> tuple[RoundOwners, list[Round]]:
    owners, seen = RoundOwners(), list[Round]()
    owners.replica = replica

    async def approve(round_: ApprovalRound, responses: Any) -> types.EmptyResult:
        seen.append(round_)
        return types.EmptyResult()

    async def ask_again(round_: WorkflowRound, responses: Any) -> types.CallToolResult:
        seen.append(round_)
        raise InputRequired(types.InputRequiredResult(input_requests={}, request_state="next"))

    owners.continues(ApprovalRound, approve)
    owners.continues(WorkflowRound, ask_again)
    return owners, seen


@pytest.mark.parametrize(
    "round_", [PendingRound("c", "a"), WorkflowRound("r", "a"), ApprovalRound("t", "k", "a"), BackendRound("b", None)]
)
def test_every_round_names_its_owner_through_the_seal(round_: Round) -> None:
    assert decode_round(encode_round(round_)) == round_


def test_a_relayed_retry_goes_to_the_registry_of_its_kind_and_a_next_question_goes_back() -> None:
    owners, seen = owners_on("a")
    approved = anyio.run(owners.continue_relayed, ApprovalRound("t", "k", "a"), None)
    asked = anyio.run(owners.continue_relayed, WorkflowRound("r", "a"), None)
    assert isinstance(approved, types.EmptyResult)
    assert isinstance(asked, types.InputRequiredResult) and asked.request_state == "next"
    assert seen == [ApprovalRound("t", "k", "a"), WorkflowRound("r", "a")]


@pytest.mark.parametrize("round_", [ApprovalRound("t", "k", "b"), PendingRound("c", "a"), BackendRound("b", None)])
def test_a_round_held_elsewhere_or_of_a_kind_nobody_continues_is_refused(round_: Round) -> None:
    owners, seen = owners_on("a")
    with pytest.raises(MCPError, match="names no call held by this replica"):
        anyio.run(owners.continue_relayed, round_, None)
    assert seen == []


def test_a_round_of_another_replica_without_a_relay_is_refused_clearly() -> None:
    owners, _ = owners_on("a")
    round_ = WorkflowRound("r", "b")
    assert owners.elsewhere(round_) and not owners.elsewhere(WorkflowRound("r", None))
    with pytest.raises(MCPError, match="pending on another gateway"):
        anyio.run(owners.relayed, round_, None, types.CallToolResult)
