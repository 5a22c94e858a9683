"""Server-to-client requests for 2026-07-28 clients: multi-round-trip calls (`InputRequiredResult`).

A 2026-07-28 client has no back-channel. A server that needs input answers the call with an
`InputRequiredResult` (`input_requests` and an opaque `request_state`); the client retries the same call
with `input_responses` and that state. Most backends ask the older way: a standalone
`sampling/createMessage`, `elicitation/create` or `roots/list` request in the middle of a call, and
they wait for the answer. The gateway bridges the two:

- a tool call of a 2026-07-28 client that declared sampling, elicitation or roots runs as a
  `PendingCall` on a backend session of its own (the 2025-11-25 handshake, advertising exactly the
  capabilities that client declared), in the gateway's task group, under a random id; the session
  serves that one call and is closed with it;
- a request the backend sends meanwhile is held, and the client's call is answered with an
  `InputRequiredResult` carrying it and a `request_state` that names the pending call;
- the retry hands the answers to the waiting backend requests and waits again, for the result or for
  the next question.

`request_state` is sealed by the SDK's `RequestStateBoundary` (AES-GCM under a key of this process,
bound to the method, name and arguments of the call, expiring after `timeouts.input`): a client can
neither read nor forge it. A pending call whose client does not come back within `timeouts.input` is
cancelled at the backend and dropped. A 2026-07-28 backend that answers with an `InputRequiredResult`
itself is passed through, its state wrapped with its name (`BackendRound`), so the retry goes back to it.

Why not one session per client, as for 2025-11-25 clients: nothing in a 2026-07-28 request says which
client sent it, and a session reused across clients would carry one client's roots and answers into
another's calls. The price is a session opened per such call (a process, for a stdio backend). To hide
its start-up, `RoundTrips` keeps one spare session per (backend, capability set) once a call with that
set has been seen (`server.round_trip_spares`): opened and initialised, owned by no call, taken whole by
the next call with exactly those capabilities, which starts a replacement in the background. A session's
callbacks go through a `SessionOwner`, so they reach whichever call holds it. A spare whose session ended
or whose backend reconnected since it was opened is closed, never handed out; a used session is still
closed with its call.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import secrets
import warnings
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
import mcp_types as types
from mcp.client.session import ClientRequestContext
from mcp.server.context import ServerRequestContext
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.server.session import ServerSession
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp_types.methods import INPUT_REQUIRED_METHODS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, TypeAdapter, ValidationError

from vmcp_opt.backends.connection import BackendConnection, BackendState, BackendUnavailable
from vmcp_opt.backends.session_pool import DedicatedSession, SessionCallbacks, SessionPool
from vmcp_opt.health import CallClock

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT", bound=BaseModel)
AnswerT = TypeVar("AnswerT", bound=BaseModel)
Ctx = ServerRequestContext[Any, Any]
Guard = Callable[[str, CallClock | None], AbstractAsyncContextManager[None]]

STATE_AUDIENCE = "vmcp-opt"
# Spare sessions per backend at most: one per capability set, and there are 7 combinations of the three
# flags; capability sets differing in their details beyond that get no spare.
MAX_SPARES_PER_BACKEND = 7


class InputRequired(Exception):
    """Carries an `InputRequiredResult` up the call path (the optimizer's `call_tool` included) to the
    front handler, which returns it in place of the result."""

    def __init__(self, result: types.InputRequiredResult) -> None:
        super().__init__("input required")
        self.result = result


# --- request_state: what the sealed state names ------------------------------------------------


@dataclass(frozen=True)
class PendingRound:
    """A call running here, waiting for the client's answers."""

    call: str


@dataclass(frozen=True)
class BackendRound:
    """A 2026-07-28 backend's own round: the retry goes to `backend` with its `state`."""

    backend: str
    state: str | None


Round = PendingRound | BackendRound


def encode_round(round_: Round) -> str:
    if isinstance(round_, PendingRound):
        return json.dumps({"call": round_.call})
    return json.dumps({"backend": round_.backend, "state": round_.state})


def decode_round(text: str) -> Round:
    """The plaintext the boundary unsealed; it was minted here, so anything else is our own bug."""
    try:
        data = json.loads(text)
        if isinstance(data.get("call"), str):
            return PendingRound(data["call"])
        if isinstance(data.get("backend"), str) and isinstance(data.get("state"), str | None):
            return BackendRound(data["backend"], data["state"])
    except (ValueError, AttributeError):
        pass
    raise MCPError(types.INVALID_PARAMS, "Invalid or expired requestState")


def state_boundary(ttl: float) -> RequestStateBoundary:
    """Seals every `request_state` the gateway hands out and verifies every one that comes back."""
    return RequestStateBoundary(RequestStateSecurity.ephemeral(ttl=ttl), default_audience=STATE_AUDIENCE)


def round_of(ctx: Ctx | None) -> Round | None:
    """The round a retry continues (its unsealed `requestState`), or None for a first call."""
    if ctx is None or ctx.method not in INPUT_REQUIRED_METHODS or not ctx.params:
        return None
    state = ctx.params.get("requestState")
    if state is None:
        return None
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        raise MCPError(types.INVALID_PARAMS, "requestState belongs to the 2026-07-28 revision; this session is older")
    return decode_round(str(state))


def input_responses(ctx: Ctx) -> types.InputResponses | None:
    raw = (ctx.params or {}).get("inputResponses")
    if raw is None:
        return None
    try:
        params = types.InputResponseRequestParams.model_validate({"inputResponses": raw}, by_name=False)
    except ValidationError:
        raise MCPError(types.INVALID_PARAMS, "inputResponses is not a map of input responses") from None
    return params.input_responses


def asks_by_round_trip(ctx: Ctx | None) -> bool:
    """A 2026-07-28 client's tool call that a backend may need to ask it something during.

    `prompts/get` and `resources/read` may carry rounds too, but backends hardly ever ask during them,
    and a session per read (a process, for a stdio backend) is too dear for that: they stay on the
    shared session, where a backend's own `InputRequiredResult` still passes through.
    """
    if ctx is None or ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS or ctx.method != "tools/call":
        return False
    capabilities = ctx.session.client_capabilities
    return capabilities is not None and any(
        c is not None for c in (capabilities.sampling, capabilities.elicitation, capabilities.roots)
    )


# --- a backend's own InputRequiredResult, passed through ------------------------------------------


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


def passed_through(ctx: Ctx | None, backend: str, result: types.InputRequiredResult) -> InputRequired:
    if ctx is None or ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        raise MCPError(
            types.INTERNAL_ERROR,
            f"backend '{backend}' asked for input with InputRequiredResult (2026-07-28), "
            "which this client's 2025-11-25 session cannot carry",
        )
    wrapped = result.model_copy(update={"request_state": encode_round(BackendRound(backend, result.request_state))})
    return InputRequired(wrapped)


# --- calls that ask their client through InputRequiredResult ------------------------------------


@dataclass(eq=False)
class _Ask:
    request: types.InputRequest
    answer_type: type[BaseModel]
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: BaseModel | None = None


class PendingCall:
    """One backend call of a 2026-07-28 client, driven round by round by the client's retries."""

    def __init__(self, trips: RoundTrips, backend: BackendConnection, capabilities: types.ClientCapabilities) -> None:
        self.id = secrets.token_urlsafe(32)
        self.trips = trips
        self.backend = backend
        self.capabilities = capabilities
        self.clock = CallClock()
        self.asks: dict[str, _Ask] = {}
        self.outcome: BaseModel | Exception | None = None
        self.session: DedicatedSession | None = None
        # The front request now waiting on this call (its progress and log messages go there).
        self.driver: ServerSession | None = None
        self.progress: ProgressFnT | None = None
        # Cancelled when the result is collected or the call abandoned; the deadline is the client's.
        self.lifetime = anyio.CancelScope()
        self._changed = anyio.Event()
        self._keys = itertools.count(1)

    # --- the backend side ------------------------------------------------------------------------

    async def live(self, request: types.Request[Any, Any], result_type: type[BaseModel]) -> None:
        """Run the call, then keep its outcome until the client collects it or `timeouts.input` passes."""
        try:
            with self.lifetime:
                await self._call(request, result_type)
                await anyio.sleep_forever()
            if self.lifetime.cancelled_caught and self.lifetime.deadline <= anyio.current_time():
                logger.info(
                    "backend %s: a 2026-07-28 client did not come back within %gs for its call; cancelled",
                    self.backend.name,
                    self.trips.input_timeout,
                )
        finally:
            self.trips.discard(self)

    async def _call(self, request: types.Request[Any, Any], result_type: type[BaseModel]) -> None:
        try:
            async with self.trips.guard(self.backend.name, self.clock):
                with self.clock.paused():  # a process start is not the call's latency
                    self.session = await self.trips.session_for(self)
                result = await self.session.request(
                    request, result_type, progress_callback=self._on_progress, timed=False
                )
            self._settle(result)
        except Exception as exc:  # handed to the client's waiting request
            self._settle(exc)
        finally:
            if self.session is not None:
                with anyio.CancelScope(shield=True):
                    await self.session.aclose()

    def _settle(self, outcome: BaseModel | Exception) -> None:
        self.outcome = outcome
        self._notify()

    async def sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools:
        request = types.CreateMessageRequest(params=params)
        if params.tools:
            return await self._ask("sampling", request, types.CreateMessageResultWithTools)
        return await self._ask("sampling", request, types.CreateMessageResult)

    async def elicitation(self, context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return await self._ask("elicitation", types.ElicitRequest(params=params), types.ElicitResult)

    async def list_roots(self, context: ClientRequestContext) -> types.ListRootsResult:
        return await self._ask("roots", types.ListRootsRequest(), types.ListRootsResult)

    async def _ask(self, kind: str, request: types.InputRequest, answer_type: type[AnswerT]) -> AnswerT:
        """Hold the backend's request until a retry of the client's call brings the answer."""
        key = f"{kind}-{next(self._keys)}"
        ask = _Ask(request, answer_type)
        self.asks[key] = ask
        self._notify()
        try:
            with self.clock.paused():
                await ask.answered.wait()
        finally:
            del self.asks[key]
        answer = ask.answer
        assert isinstance(answer, answer_type)
        return answer

    async def _on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        if self.progress is not None:
            await _quietly(self.progress(progress, total, message))

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        if self.driver is None:
            return
        with warnings.catch_warnings():  # deprecated in 2026-07-28, yet the per-request opt-in is honoured
            warnings.simplefilter("ignore")
            await _quietly(self.driver.send_log_message(params.level, params.data, params.logger))

    # --- the client side -------------------------------------------------------------------------

    def answer(self, responses: types.InputResponses | None) -> None:
        """Hand a retry's answers to the backend requests they answer; all or none of them."""
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

    async def next_round(self, session: ServerSession, progress: ProgressFnT | None) -> BaseModel:
        """The call's result, or `InputRequired` with the questions the backend is waiting on."""
        self.driver, self.progress = session, progress
        self.lifetime.deadline = math.inf
        try:
            while True:
                if self.outcome is not None:
                    self._collected()
                    if isinstance(self.outcome, Exception):
                        raise self.outcome
                    return self.outcome
                questions: types.InputRequests = {k: a.request for k, a in self.asks.items() if a.answer is None}
                if questions:
                    self.lifetime.deadline = anyio.current_time() + self.trips.input_timeout
                    state = encode_round(PendingRound(self.id))
                    raise InputRequired(types.InputRequiredResult(input_requests=questions, request_state=state))
                changed = self._changed
                await changed.wait()
        except anyio.get_cancelled_exc_class():
            self._collected()  # the client gave up on the call: so does the backend
            raise
        finally:
            self.driver, self.progress = None, None

    def _collected(self) -> None:
        self.trips.discard(self)
        self.lifetime.cancel()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class SessionOwner:
    """A round-trip session's callbacks: what its backend sends goes to the call that holds it now.

    A spare is opened before any call owns it; the call that takes it becomes its owner.
    """

    def __init__(self, call: PendingCall | None = None) -> None:
        self.call = call

    def callbacks(self, capabilities: types.ClientCapabilities) -> SessionCallbacks:
        return SessionCallbacks.mirroring(
            capabilities,
            sampling=self._sampling,
            elicitation=self._elicitation,
            list_roots=self._list_roots,
            logging=self._log,
        )

    async def _sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        if self.call is None:
            return _unowned()
        return await self.call.sampling(context, params)

    async def _elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        if self.call is None:
            return _unowned()
        return await self.call.elicitation(context, params)

    async def _list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        if self.call is None:
            return _unowned()
        return await self.call.list_roots(context)

    async def _log(self, params: types.LoggingMessageNotificationParams) -> None:
        if self.call is not None:
            await self.call.log(params)


def _unowned() -> types.ErrorData:
    return types.ErrorData(code=types.INVALID_REQUEST, message="no call is in progress on this session")


SpareKey = tuple[str, str]  # backend name, the mirrored capabilities as canonical JSON


def spare_key(backend: BackendConnection, capabilities: types.ClientCapabilities) -> SpareKey:
    """Sessions are interchangeable when they advertise exactly the same capabilities to the same backend."""
    mirrored = {
        name: value.model_dump(mode="json", by_alias=True, exclude_none=True) if value is not None else None
        for name, value in (
            ("sampling", capabilities.sampling),
            ("elicitation", capabilities.elicitation),
            ("roots", capabilities.roots),
        )
    }
    return backend.name, json.dumps(mirrored, sort_keys=True)


@dataclass(eq=False)
class _Spare:
    session: DedicatedSession
    owner: SessionOwner
    backend: BackendConnection
    generation: int  # `backend.sessions` when it was opened: a reconnect since makes it stale
    opened_at: float

    def usable(self) -> bool:
        return (
            not self.session.closed
            and not self.session.ended
            and self.backend.state is BackendState.READY
            and self.backend.sessions == self.generation
        )


class RoundTrips:
    """The pending calls of 2026-07-28 clients, by id; at most `max_pending` at once. Also their spare
    backend sessions (at most one per backend and capability set) when `spares` is on."""

    def __init__(
        self, pool: SessionPool, guard: Guard, *, max_pending: int, input_timeout: float, spares: bool = True
    ) -> None:
        self.pool = pool
        self.guard = guard
        self.max_pending = max_pending
        self.input_timeout = input_timeout
        self.spares_enabled = spares
        self._calls: dict[str, PendingCall] = {}
        self._spares: dict[SpareKey, _Spare] = {}
        self._filling: set[SpareKey] = set()
        self._stopped = False
        self._task_group: anyio.abc.TaskGroup | None = None

    def attach(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group

    def __len__(self) -> int:
        return len(self._calls)

    def discard(self, call: PendingCall) -> None:
        self._calls.pop(call.id, None)

    def stop(self) -> None:
        """Cancel every pending call and close the spares (the gateway is stopping; its task group waits)."""
        self._stopped = True
        for call in list(self._calls.values()):
            call.lifetime.cancel()
        spares, self._spares = list(self._spares.values()), {}
        for spare in spares:
            spare.session.close()

    # --- sessions: a spare when one is ready, else a new one; either way the call's alone ----------

    async def session_for(self, call: PendingCall) -> DedicatedSession:
        key = spare_key(call.backend, call.capabilities)
        spare = self._spares.pop(key, None)
        if spare is not None and spare.backend is call.backend and spare.usable():
            spare.owner.call = call
            logger.info(
                "backend %s: a 2026-07-28 call took a spare session (opened %.1fs before)",
                call.backend.name,
                anyio.current_time() - spare.opened_at,
            )
            self._replenish(key, call.backend, call.capabilities)
            return spare.session
        if spare is not None:
            self._drop(spare, "it ended or its backend reconnected")
        session = await self.pool.open(call.backend, SessionOwner(call).callbacks(call.capabilities))
        self._replenish(key, call.backend, call.capabilities)
        return session

    def backend_changed(self, backend: BackendConnection) -> None:
        """A backend left service or came back: its spares from before are stale."""
        for key, spare in list(self._spares.items()):
            if spare.backend.name == backend.name and not (spare.backend is backend and spare.usable()):
                del self._spares[key]
                self._drop(spare, "its backend left or reconnected")

    def _drop(self, spare: _Spare, why: str) -> None:
        logger.info("backend %s: a spare session was closed unused: %s", spare.backend.name, why)
        spare.session.close()

    def _replenish(self, key: SpareKey, backend: BackendConnection, capabilities: types.ClientCapabilities) -> None:
        if not self.spares_enabled or self._stopped or self._task_group is None:
            return
        # No spare for a client that has roots: servers such as server-filesystem ask for roots right after
        # initialisation, which a spare, owned by no call yet, cannot answer; they would then never see the
        # client's roots.
        if capabilities.roots is not None:
            return
        if key in self._spares or key in self._filling:
            return
        held = sum(1 for name, _ in (*self._spares, *self._filling) if name == key[0])
        if held >= MAX_SPARES_PER_BACKEND:
            return
        self._filling.add(key)
        self._task_group.start_soon(self._fill, key, backend, capabilities, name=f"round-trip-spare:{backend.name}")

    async def _fill(self, key: SpareKey, backend: BackendConnection, capabilities: types.ClientCapabilities) -> None:
        try:
            owner = SessionOwner()
            generation = backend.sessions
            try:
                session = await self.pool.open(backend, owner.callbacks(capabilities))
            except BackendUnavailable as exc:
                logger.info("backend %s: no spare session for 2026-07-28 calls: %s", backend.name, exc)
                return
            spare = _Spare(session, owner, backend, generation, anyio.current_time())
            if self._stopped or not self.spares_enabled or not spare.usable():
                session.close()
                return
            self._spares[key] = spare
            logger.info("backend %s: a spare session for 2026-07-28 calls is ready", backend.name)
        finally:
            self._filling.discard(key)

    async def start(
        self,
        ctx: Ctx,
        backend: BackendConnection,
        request: types.Request[Any, Any],
        result_type: type[ResultT],
        progress: ProgressFnT | None,
    ) -> ResultT:
        if self._task_group is None:
            raise MCPError(types.INTERNAL_ERROR, "the gateway is not started")
        if len(self._calls) >= self.max_pending:
            raise MCPError(
                types.INTERNAL_ERROR,
                f"the gateway already holds {self.max_pending} calls that may ask their client for input "
                "(server.max_pending_calls); try again later",
            )
        call = PendingCall(self, backend, ctx.session.client_capabilities or types.ClientCapabilities())
        self._calls[call.id] = call
        self._task_group.start_soon(call.live, request, result_type, name=f"round-trip:{backend.name}")
        return _expect(await call.next_round(ctx.session, progress), result_type)

    async def resume(
        self, ctx: Ctx, round_: PendingRound, result_type: type[ResultT], progress: ProgressFnT | None
    ) -> ResultT:
        call = self._calls.get(round_.call)
        if call is None:
            raise MCPError(
                types.INVALID_PARAMS,
                "requestState names no pending call: it has finished, was cancelled, or its client did not "
                f"come back within {self.input_timeout:g}s; call again without requestState",
            )
        if call.driver is not None:
            raise MCPError(types.INVALID_REQUEST, "this call is already being continued by another request")
        if call.outcome is None:  # a call that ended meanwhile (its backend gave up) has nothing to answer
            call.answer(input_responses(ctx))
        return _expect(await call.next_round(ctx.session, progress), result_type)


def _expect(result: BaseModel, result_type: type[ResultT]) -> ResultT:
    if not isinstance(result, result_type):
        raise MCPError(
            types.INVALID_PARAMS, f"requestState belongs to another kind of request ({type(result).__name__})"
        )
    return result


async def _quietly(send: Any) -> None:
    try:
        await send
    except Exception as exc:  # a client gone away must not break the backend call
        logger.debug("round trip: message not delivered to the client: %r", exc)
