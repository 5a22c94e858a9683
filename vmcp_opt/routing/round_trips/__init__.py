"""Server-to-client requests for 2026-07-28 clients: multi-round-trip calls (`InputRequiredResult`).

`state.py` says what a sealed `request_state` names; `held.py` holds the questions of work that runs while
its client answers (a backend call here, a workflow run in `workflows/rounds.py`); `pending.py` runs the
backend calls that ask their client round by round; `spares.py` keeps their backend sessions ready;
`owners.py` relays a retry to the replica holding its round, whatever its kind.
"""

from vmcp_opt.routing.round_trips.owners import HeldRound, RoundOwners, RoundRelay
from vmcp_opt.routing.round_trips.pending import PendingCall, RoundTrips
from vmcp_opt.routing.round_trips.state import (
    ApprovalRound,
    BackendRound,
    InputRequired,
    PendingRound,
    Round,
    WorkflowRound,
    encode_round,
    input_responses,
    or_input_required,
    passed_through,
    round_of,
    state_boundary,
    with_round,
)

__all__ = [
    "ApprovalRound",
    "BackendRound",
    "HeldRound",
    "InputRequired",
    "PendingCall",
    "PendingRound",
    "Round",
    "RoundOwners",
    "RoundRelay",
    "RoundTrips",
    "WorkflowRound",
    "encode_round",
    "input_responses",
    "or_input_required",
    "passed_through",
    "round_of",
    "state_boundary",
    "with_round",
]
