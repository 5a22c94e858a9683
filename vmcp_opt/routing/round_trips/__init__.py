"""Server-to-client requests for 2026-07-28 clients: multi-round-trip calls (`InputRequiredResult`).

`state.py` says what a sealed `request_state` names; `pending.py` runs the calls that ask their client
round by round; `spares.py` keeps their backend sessions ready.
"""

from vmcp_opt.routing.round_trips.pending import PendingCall, RoundTrips
from vmcp_opt.routing.round_trips.state import (
    ApprovalRound,
    BackendRound,
    InputRequired,
    PendingRound,
    Round,
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
    "InputRequired",
    "PendingCall",
    "PendingRound",
    "Round",
    "RoundTrips",
    "input_responses",
    "or_input_required",
    "passed_through",
    "round_of",
    "state_boundary",
    "with_round",
]
