"""What a 2026-07-28 `request_state` names, and a backend's own `InputRequiredResult` passed through.

`request_state` is sealed by the SDK's `RequestStateBoundary` (AES-GCM under a key of this process,
bound to the method, name and arguments of the call and to the verified caller, expiring after
`timeouts.input`, under the key replicas share when `request_state:` names one): a client can neither read
nor forge it, nor continue another caller's round with it. Inside the seal it names a call pending here (`PendingRound`), a
2026-07-28 backend's own round (`BackendRound`), whose retry goes back to that backend with its state, a
workflow run waiting for an answer to its own question (`WorkflowRound`), or an approval question
(`ApprovalRound`). All but `BackendRound` are held in one replica's memory and name it (`owner`): a retry
landing on another replica is relayed there (owners.py).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import principal_components
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity, authenticated_principal
from mcp.shared.exceptions import MCPError
from mcp_types.methods import INPUT_REQUIRED_METHODS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, TypeAdapter, ValidationError

ResultT = TypeVar("ResultT", bound=BaseModel)

logger = logging.getLogger(__name__)
STATE_AUDIENCE = "vmcp-opt"


class InputRequired(Exception):
    """Carries an `InputRequiredResult` up the call path (the optimizer's `call_tool` included) to the
    front handler, which returns it in place of the result."""

    def __init__(self, result: types.InputRequiredResult) -> None:
        super().__init__("input required")
        self.result = result


@dataclass(frozen=True)
class PendingRound:
    """A call running on replica `owner` (None: a single gateway), waiting for the client's answers."""

    call: str
    owner: str | None = None


@dataclass(frozen=True)
class BackendRound:
    """A 2026-07-28 backend's own round: the retry goes to `backend` with its `state`."""

    backend: str
    state: str | None


@dataclass(frozen=True)
class WorkflowRound:
    """A workflow run waiting on replica `owner` for its client's answer to one of its own questions
    (workflows/rounds.py)."""

    run: str
    owner: str | None = None


@dataclass(frozen=True)
class ApprovalRound:
    """Replica `owner` asked the user to approve a call of `tool` (routing/approval.py); `ticket` is single-use."""

    tool: str
    ticket: str
    owner: str | None = None


Round = PendingRound | BackendRound | WorkflowRound | ApprovalRound


def encode_round(round_: Round) -> str:
    if isinstance(round_, PendingRound):
        return json.dumps({"call": round_.call, "owner": round_.owner})
    if isinstance(round_, WorkflowRound):
        return json.dumps({"workflow": round_.run, "owner": round_.owner})
    if isinstance(round_, ApprovalRound):
        return json.dumps({"approve": round_.tool, "ticket": round_.ticket, "owner": round_.owner})
    return json.dumps({"backend": round_.backend, "state": round_.state})


def decode_round(text: str) -> Round:
    """The plaintext the boundary unsealed; it was minted here, so anything else is our own bug."""
    try:
        data = json.loads(text)
        owner = data.get("owner")  # the replica holding the round (PendingRound, WorkflowRound, ApprovalRound)
        if isinstance(data.get("call"), str) and isinstance(owner, str | None):
            return PendingRound(data["call"], owner)
        if isinstance(data.get("workflow"), str) and isinstance(owner, str | None):
            return WorkflowRound(data["workflow"], owner)
        if (
            isinstance(data.get("approve"), str)
            and isinstance(data.get("ticket"), str)
            and isinstance(owner, str | None)
        ):
            return ApprovalRound(data["approve"], data["ticket"], owner)
        if isinstance(data.get("backend"), str) and isinstance(data.get("state"), str | None):
            return BackendRound(data["backend"], data["state"])
    except (ValueError, AttributeError):
        pass
    raise MCPError(types.INVALID_PARAMS, "Invalid or expired requestState")


# Told of a retry the boundary refused: the request, and the tool, prompt or resource it names.
RoundRefused = Callable[[ServerRequestContext[Any, Any], str | None], None]


def state_boundary(
    ttl: float, keys: Sequence[bytes] | None = None, refused: RoundRefused | None = None
) -> RequestStateBoundary | RefusalsTold:
    """Seals every `request_state` the gateway hands out and verifies every one that comes back: under
    `keys` (the first seals, all unseal; shared by replicas, vmcp_opt/shared/state_keys.py), else under a
    key of this process; bound to the caller's principal (`request_principal`). `refused` is told of each
    retry it refuses (telemetry's `round_refused`)."""
    ring = list(keys) if keys else [os.urandom(32)]  # as `RequestStateSecurity.ephemeral` does
    security = RequestStateSecurity(keys=ring, ttl=ttl, bind_principal=request_principal)
    boundary = RequestStateBoundary(security, default_audience=STATE_AUDIENCE)
    return boundary if refused is None else RefusalsTold(boundary, refused)


class RefusalsTold:
    """The boundary, telling `refused` of each retry whose `requestState` it refused (expired, forged, another
    caller's, for other arguments): answered before any handler runs, such a retry reaches no watcher of the
    router, and left no audit event. Only the boundary's own refusals: an error of what it wraps is that
    request's operation's. The state itself is never passed on: it is the client's, and may be anything."""

    def __init__(self, boundary: RequestStateBoundary, refused: RoundRefused) -> None:
        self._boundary = boundary
        self._refused = refused

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        reached = False

        async def handler(verified: ServerRequestContext[Any, Any]) -> HandlerResult:
            nonlocal reached
            reached = True
            return await call_next(verified)

        try:
            return await self._boundary(ctx, handler)
        except MCPError:
            if not reached:
                self._tell(ctx)
            raise

    def _tell(self, ctx: ServerRequestContext[Any, Any]) -> None:
        params = ctx.params or {}
        named = params.get("uri") if ctx.method == "resources/read" else params.get("name")
        try:
            self._refused(ctx, named if isinstance(named, str) else None)
        except Exception:  # telemetry's bug must not change the client's answer
            logger.exception("telling of a refused requestState failed")


def request_principal(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """Who a round belongs to: the verified principal the authentication middleware put in the request's
    scope (server/authentication.py), None when unauthenticated. The SDK's default reads a context variable
    that only its own auth middleware sets, which the gateway does not run: without this, one caller could
    continue (and answer, and collect the result of) another caller's round with a state it came by."""
    scope = getattr(ctx.request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else None
    if isinstance(user, AuthenticatedUser):
        return json.dumps(principal_components(user.access_token), separators=(",", ":"))
    return authenticated_principal(ctx)


def round_of(method: str, params: Mapping[str, Any] | None, protocol_version: str) -> Round | None:
    """The round a retry continues (its unsealed `requestState`), or None for a first call."""
    if method not in INPUT_REQUIRED_METHODS or not params:
        return None
    state = params.get("requestState")
    if state is None:
        return None
    if protocol_version not in MODERN_PROTOCOL_VERSIONS:
        raise MCPError(types.INVALID_PARAMS, "requestState belongs to the 2026-07-28 revision; this session is older")
    return decode_round(str(state))


def input_responses(params: Mapping[str, Any] | None) -> types.InputResponses | None:
    raw = (params or {}).get("inputResponses")
    if raw is None:
        return None
    try:
        parsed = types.InputResponseRequestParams.model_validate({"inputResponses": raw}, by_name=False)
    except ValidationError:
        raise MCPError(types.INVALID_PARAMS, "inputResponses is not a map of input responses") from None
    return parsed.input_responses


_ADAPTERS: dict[type[BaseModel], TypeAdapter[Any]] = {}


def or_input_required(result_type: type[ResultT]) -> TypeAdapter[ResultT | types.InputRequiredResult]:
    """Parses `result_type` or an `InputRequiredResult`; built once per result type (it is not cheap)."""
    adapter = _ADAPTERS.get(result_type)
    if adapter is None:
        union: Any = result_type | types.InputRequiredResult
        adapter = _ADAPTERS[result_type] = TypeAdapter(union)
    return cast("TypeAdapter[ResultT | types.InputRequiredResult]", adapter)


def with_round(request: types.Request[Any, Any], state: str | None, responses: types.InputResponses | None) -> Any:
    """`request` as the retry of a backend's round: its own state and the client's answers."""
    params = request.params.model_copy(update={"request_state": state, "input_responses": responses})
    return request.model_copy(update={"params": params})


def passed_through(protocol_version: str, backend: str, result: types.InputRequiredResult) -> InputRequired:
    """A backend's own `InputRequiredResult`, its state wrapped so the client's retry comes back to it."""
    if protocol_version not in MODERN_PROTOCOL_VERSIONS:
        raise MCPError(
            types.INTERNAL_ERROR,
            f"backend '{backend}' asked for input with InputRequiredResult (2026-07-28), "
            "which this client's 2025-11-25 session cannot carry",
        )
    wrapped = result.model_copy(update={"request_state": encode_round(BackendRound(backend, result.request_state))})
    return InputRequired(wrapped)
