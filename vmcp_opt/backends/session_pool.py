"""Backend sessions dedicated to one front client, for what one shared session cannot route.

A backend's `sampling/createMessage`, `elicitation/create`, `roots/list`, log messages and
`resources/updated` carry nothing that says which client caused them, so a session shared by all
clients cannot deliver them. A `DedicatedSession` is a backend session opened for one front client:
it speaks the 2025-11-25 handshake (the era with server-to-client requests), advertises exactly the
capabilities the front client has, and hands everything the backend sends to that client's callbacks. Roots are
the exception: only a backend whose `roots` setting relays them (by default a remote one) is told of them and may
ask for them. A client's roots name folders on its own machine; a stdio backend runs on the gateway's host, and
server-filesystem, say, took the client's answer as the folders it may read there instead of the operator's.
The `SessionPool` runs them in the gateway's task group and closes them when their client goes away.

What a backend asks the client through a session is bounded (`AskBound`): a call's server-to-client
requests are the backend's to send, and each one relayed holds a task and a client's attention. Its other requests
(ping…), answered by the SDK itself, are bounded as on the shared session (`bounded_backend_requests`).

Just past ~450 lines: a dedicated session's life (open, serve, the bounded relays, calls given up on) is one
thing; the pool around it is small.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import anyio
import anyio.abc
import mcp_types as types
from mcp.client._probe import negotiate_auto
from mcp.client.session import (
    ClientRequestContext,
    ClientSession,
    ElicitationFnT,
    IncomingMessage,
    ListRootsFnT,
    LoggingFnT,
    SamplingFnT,
)
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from vmcp_opt.backends.backend_requests import bounded_backend_requests
from vmcp_opt.backends.big_requests import as_given
from vmcp_opt.backends.connection import (
    CLIENT_INFO,
    BackendConnection,
    BackendUnavailable,
    bounded_close,
    failed_because,
    is_list_changed,
)
from vmcp_opt.backends.credentials import BackendAuth
from vmcp_opt.backends.errors import CredentialError, closed_by_exit_when_seen
from vmcp_opt.backends.forwarding import HeaderWriteStream, forwarding
from vmcp_opt.backends.http_bodies import as_internal_error
from vmcp_opt.backends.inbound import CountedReadStream
from vmcp_opt.backends.listing import WatchedReadStream
from vmcp_opt.backends.relay_bounds import NotificationBound, coalesced
from vmcp_opt.backends.results import measured_result
from vmcp_opt.backends.stdio import BrokenOutput, measures_results
from vmcp_opt.backends.transports import StderrTail, open_transport
from vmcp_opt.logs import ThrottledLog

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT", bound=BaseModel)
AnswerT = TypeVar("AnswerT")
CLOSE_TIMEOUT = 5.0  # seconds a closing session may take to shut its transport

# Server-to-client requests (sampling, elicitation, roots) one session may have open with its client at once.
# Enough for a backend that fans out a handful of samplings in parallel; each open one is an LLM call or a form
# the client shows, and, for a 2026-07-28 client, one entry of an `InputRequiredResult`. More wait for a slot.
MAX_ASKS_IN_FLIGHT = 8
# ... and may make per call in all (and between calls). Generous for an agent loop that samples at every step;
# a backend past it is looping or hostile, and its further requests are refused at once, so what it can make
# the gateway hold for one call is this many waiting tasks at most.
MAX_ASKS_PER_CALL = 100

_ask_log = ThrottledLog(logger)
_open_log = ThrottledLog(logger)  # per backend: a client can have the gateway open sessions again and again


class AskBound:
    """How much a backend may ask its client through one session: at most `in_flight` requests open at once
    (more wait for a slot: a backend fanning out a few more still works, only slower) and `per_call` for each
    call in flight on the session (more are refused at once with a JSON-RPC error naming the bound).

    A session's calls are counted in stretches: the asks of a stretch of calls overlapping on the session share
    `per_call` for each call in it (a backend's request does not say which call it belongs to); the stretch
    between calls (roots asked after initialisation, say) gets `per_call` of its own. A 2026-07-28 call has a
    session of its own, so there the bound is exactly the call's.
    """

    def __init__(self, backend: str, *, in_flight: int = MAX_ASKS_IN_FLIGHT, per_call: int = MAX_ASKS_PER_CALL) -> None:
        self.backend = backend
        self.per_call = per_call
        self._slots = anyio.Semaphore(in_flight)
        self._calls = 0  # calls in flight on the session now
        self._allowed = per_call
        self._asked = 0
        self._warned = False

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """A call on the session, in flight while inside: it brings `per_call` more asks to its stretch."""
        if self._calls == 0:
            self._new_stretch(0)
        self._calls += 1
        self._allowed += self.per_call
        try:
            yield
        finally:
            self._calls -= 1
            if self._calls == 0:
                self._new_stretch(self.per_call)

    def _new_stretch(self, allowed: int) -> None:
        self._allowed, self._asked, self._warned = allowed, 0, False

    async def relay(self, method: str, ask: Callable[[], Awaitable[AnswerT]]) -> AnswerT | types.ErrorData:
        """`ask()` once a slot is free, or the refusal when the stretch has used its allowance."""
        if self._asked >= self._allowed:
            return self._refuse(method)
        self._asked += 1
        async with self._slots:
            return await ask()

    def _refuse(self, method: str) -> types.ErrorData:
        if not self._warned:  # once per stretch, and once a minute per backend across them
            self._warned = True
            _ask_log.warning(
                self.backend,
                "backend %s: made more than %d requests to the client (%s) in one call; refusing the rest",
                self.backend,
                self.per_call,
                method,
            )
        return types.ErrorData(
            code=types.INVALID_REQUEST,
            message=f"{method} refused: the gateway relays at most {self.per_call} requests to the client per call",
            data={"limit": "requests to the client per call", "max": self.per_call},
        )


@dataclass
class SessionCallbacks:
    """What a dedicated session does with what its backend sends; `None` means not supported."""

    capabilities: types.ClientCapabilities
    sampling: SamplingFnT | None = None
    elicitation: ElicitationFnT | None = None
    list_roots: ListRootsFnT | None = None
    logging: LoggingFnT | None = None
    notification: Callable[[types.ServerNotification], Awaitable[None]] | None = None

    @classmethod
    def mirroring(
        cls,
        capabilities: types.ClientCapabilities,
        *,
        sampling: SamplingFnT,
        elicitation: ElicitationFnT,
        list_roots: ListRootsFnT,
        logging: LoggingFnT | None = None,
        notification: Callable[[types.ServerNotification], Awaitable[None]] | None = None,
    ) -> SessionCallbacks:
        """Callbacks for exactly the server-to-client requests the client behind the session can answer."""
        return cls(
            capabilities=capabilities,
            sampling=sampling if capabilities.sampling is not None else None,
            elicitation=elicitation if capabilities.elicitation is not None else None,
            list_roots=list_roots if capabilities.roots is not None else None,
            logging=logging,
            notification=notification,
        )

    def relayed_methods(self) -> frozenset[str]:
        """The backend's requests these callbacks relay to the client; the SDK answers any other itself."""
        relayed = {
            "sampling/createMessage": self.sampling is not None,
            "elicitation/create": self.elicitation is not None,
            "roots/list": self.list_roots is not None,
        }
        return frozenset(method for method, relays in relayed.items() if relays)

    def without_roots(self) -> SessionCallbacks:
        """The same callbacks for a backend not to be asked about roots: none declared, its `roots/list` refused
        (the SDK's own answer to a request it has no callback for)."""
        return replace(self, capabilities=self.capabilities.model_copy(update={"roots": None}), list_roots=None)

    def bounded(self, asks: AskBound, notices: NotificationBound) -> SessionCallbacks:
        """The same callbacks, each server-to-client request relayed within `asks`, each log message within
        `notices`."""
        sampling, elicitation, list_roots, log = self.sampling, self.elicitation, self.list_roots, self.logging

        async def bounded_sampling(
            context: ClientRequestContext, params: types.CreateMessageRequestParams
        ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
            assert sampling is not None
            return await asks.relay("sampling/createMessage", lambda: sampling(context, params))

        async def bounded_elicitation(
            context: ClientRequestContext, params: types.ElicitRequestParams
        ) -> types.ElicitResult | types.ErrorData:
            assert elicitation is not None
            return await asks.relay("elicitation/create", lambda: elicitation(context, params))

        async def bounded_list_roots(context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
            assert list_roots is not None
            return await asks.relay("roots/list", lambda: list_roots(context))

        async def bounded_log(params: types.LoggingMessageNotificationParams) -> None:
            assert log is not None
            await notices.relay(lambda: log(params))

        return replace(
            self,
            sampling=bounded_sampling if sampling is not None else None,
            elicitation=bounded_elicitation if elicitation is not None else None,
            list_roots=bounded_list_roots if list_roots is not None else None,
            logging=bounded_log if log is not None else None,
        )


class _MirroringClientSession(ClientSession):
    """Advertises the front client's own sampling, elicitation and roots capabilities, never more.

    `ClientSession` derives its capabilities from which callbacks are set (and always claims both
    elicitation modes); a relay must claim what the client behind it claimed.
    """

    def __init__(self, *args: Any, mirrored: types.ClientCapabilities, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mirrored = mirrored

    def _build_capabilities(self, version: str) -> types.ClientCapabilities:
        return types.ClientCapabilities(
            sampling=self._mirrored.sampling, elicitation=self._mirrored.elicitation, roots=self._mirrored.roots
        )


class DedicatedSession:
    def __init__(
        self, connection: BackendConnection, callbacks: SessionCallbacks, auth: BackendAuth | None = None
    ) -> None:
        self.connection = connection
        # What its HTTP requests carry: the caller's exchanged token (token_exchange), else the backend's own.
        self.auth = auth
        self.name = connection.name
        # Both eras' relays (routing/dedicated.py, routing/round_trips/) come through here: one place decides roots.
        self.callbacks = callbacks = callbacks if connection.config.relays_roots() else callbacks.without_roots()
        self.asks = AskBound(connection.name)
        self.notices = NotificationBound(connection.name)
        # Whether the backend may send this client anything (requests, logs, updates): the 2025-11-25 era then.
        self._relays = auth is None or any(
            c is not None for c in (callbacks.sampling, callbacks.elicitation, callbacks.list_roots, callbacks.logging)
        )
        self.closed = False
        self.served = False
        self.ended = False  # its transport's read stream ended: the backend process exited or the stream broke
        self.broken: BrokenOutput | None = None  # its stdout was junk (backends/stdio.py `UnusableLines`): why it ended
        # A stdio process's exit status and last stderr line, known once `_done` is set: what a call it failed says.
        self._stderr = StderrTail()
        self._session: ClientSession | None = None
        self._stop = anyio.Event()
        self._done = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open, handshake, report started, and serve until `close()` or the backend goes away."""
        # Both eras' relays (routing/dedicated.py, routing/round_trips/) come through here: one bound for both.
        callbacks = self.callbacks.bounded(self.asks, self.notices)
        auth = self.auth = self.auth or self.connection.credentials.service()
        try:
            await auth.prepare()
            closing = f"backend {self.name}: a client's dedicated session"
            with bounded_close(self.connection.config.transport, closing) as close:
                async with (
                    open_transport(
                        self.connection.config,
                        self.connection.base_dir,
                        self.connection.connect_timeout,
                        auth,
                        max_result_bytes=self.connection.limits.max_result_bytes,
                        max_result_values=self.connection.limits.max_result_values,
                        stderr_tail=self._stderr,
                    ) as (raw_read, write),
                    # What the SDK answers itself (ping…) bounded; what the backend asks the client is `asks`' alone.
                    # Its messages counted as the shared session's are, into the backend's one count (by its name).
                    bounded_backend_requests(
                        WatchedReadStream(
                            CountedReadStream(raw_read, self.connection.inbound, self._output_broken),
                            self._on_stream_end,
                        ),
                        HeaderWriteStream(write),
                        self.name,
                        exempt=callbacks.relayed_methods(),
                    ) as (read, answers),
                    _MirroringClientSession(
                        read,
                        answers,
                        sampling_callback=callbacks.sampling,
                        elicitation_callback=callbacks.elicitation,
                        list_roots_callback=callbacks.list_roots,
                        logging_callback=callbacks.logging,
                        message_handler=self._on_message,
                        client_info=CLIENT_INFO,
                        mirrored=callbacks.capabilities,
                    ) as session,
                ):
                    with close.after():
                        await self._serve(session, task_status)
        finally:
            self.closed = True
            self._session = None
            self._done.set()

    async def _serve(self, session: ClientSession, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The handshake, then serving until `close()` or the backend goes away."""
        with anyio.fail_after(self.connection.connect_timeout):
            if self._relays:
                await session.initialize()
            else:  # only the caller's credentials: whichever era the backend speaks best, as the shared one
                await negotiate_auto(session)
        self._session = session
        self.served = True
        task_status.started()
        await self._stop.wait()

    def _on_stream_end(self) -> None:
        # The backend process exited (or its stream broke): this session can serve nothing more. Ending it marks
        # it `closed`, so its client's next call opens a new one instead of failing "Connection closed" on the
        # dead one until the client goes away (and feeding the backend's circuit, for every client, meanwhile).
        self.ended = self.closed = True
        self._stop.set()

    def _output_broken(self, exc: BrokenOutput) -> None:
        """The stdio reader gave up on this process's stdout: the session ends with the stream's end that follows,
        and the calls it cuts off say why, not "Connection closed" or the exit status of a process the gateway
        stopped. The client's next call opens a new session (within its start rate)."""
        self.broken = exc
        logger.info("backend %s: a client's dedicated session ended: %s", self.name, exc.told)

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            logger.debug("backend %s (dedicated session) transport error: %s", self.name, message)
            return
        if is_list_changed(message):
            # A backend announces a change on the session whose request caused it (the SDK's
            # `ctx.session.send_tool_list_changed()`), so the shared session may never hear of it: the
            # catalogue, built from the shared session, is re-fetched as if it had. (A stdio backend runs
            # one process per session; a change local to this client's process cannot show there.)
            self.connection.refresh_soon()
            return
        notification = self.callbacks.notification
        if notification is not None:
            await self.notices.relay(lambda: notification(message))

    def close(self) -> None:
        self._stop.set()

    async def wait_ended(self) -> None:
        """Until the session is over: closed, or its process or stream ended."""
        await self._done.wait()

    async def aclose(self) -> None:
        self.close()
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await self._done.wait()

    async def request(
        self,
        request: types.Request[Any, Any],
        result_type: type[ResultT],
        *,
        progress_callback: ProgressFnT | None = None,
        timed: bool = True,
        headers: dict[str, str] | None = None,
    ) -> ResultT:
        """Forward a request; `timed=False` leaves the deadline to the caller (`HealthMonitor.guarded`).

        The SDK's read timeout cannot pause while the backend waits for the client, the caller's can.
        """
        session = self._session
        if session is None:
            raise BackendUnavailable(f"backend '{self.name}': this client's session is closed")
        if self.auth is not None:
            await self.auth.prepare()
        progress = coalesced(progress_callback)
        try:
            with forwarding(headers), self.asks.call():
                # As on the shared session: a call given up on returns at once, the SDK's courtesy cancel does not
                # wait for a stuck transport (backends/courtesy_cancels.py).
                result = await session.send_request(
                    as_given(request),  # type: ignore[arg-type]  # big arguments: not copied on the loop
                    result_type,
                    request_read_timeout_seconds=self.connection.call_timeout if timed else None,
                    progress_callback=progress,
                )
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream) as exc:
            self._raise_if_broken(exc)
            raise failed_because(self.name, "connection lost", exc, self.connection.secrets) from exc
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                self._raise_if_broken(exc)
            refused = self.auth.refusal() if self.auth is not None else None
            if refused is not None:
                raise refused from exc
            over_cap = as_internal_error(exc)
            if over_cap is not None:
                raise over_cap from None
            if exc.code == types.CONNECTION_CLOSED and self.connection.config.transport == "stdio":
                # Its process exited mid-call: say how, as a call on the shared session does.
                raise await closed_by_exit_when_seen(exc, self._stderr, self._done, self.connection.secrets) from exc
            raise
        finally:
            if progress is not None:
                progress.close()  # answered or given up on: the backend's progress stops here
        limits, transport = self.connection.limits, self.connection.config.transport
        return await measured_result(self.name, result, limits.max_result_bytes, measured=measures_results(transport))

    def _raise_if_broken(self, exc: BaseException) -> None:
        """A call the end of junk output cut off: its client is told that, as on the shared session."""
        if self.broken is not None:
            told = f"backend '{self.name}': {self.broken.told}; this client's session with it ended"
            raise BackendUnavailable(told) from exc

    async def notify(self, notification: types.ClientNotification) -> None:
        if isinstance(notification, types.RootsListChangedNotification) and self.callbacks.capabilities.roots is None:
            return  # this session declared no roots: the backend has no list to ask again for
        if self._session is not None:
            await self._session.send_notification(notification)


class SessionPool:
    """Runs dedicated sessions in the gateway's task group; `stop()` closes them all."""

    def __init__(self) -> None:
        self._task_group: anyio.abc.TaskGroup | None = None
        self._sessions: set[DedicatedSession] = set()

    def attach(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group

    def __len__(self) -> int:
        return len(self._sessions)

    async def open(
        self, connection: BackendConnection, callbacks: SessionCallbacks, auth: BackendAuth | None = None
    ) -> DedicatedSession:
        if self._task_group is None:
            raise BackendUnavailable(f"backend '{connection.name}': the gateway is not started")
        session = DedicatedSession(connection, callbacks, auth)
        self._sessions.add(session)
        try:
            await self._task_group.start(self._run, session)
        except CredentialError:
            self._sessions.discard(session)
            raise
        except Exception as exc:
            self._sessions.discard(session)
            refused = session.auth.refusal() if session.auth is not None else None
            if refused is not None:
                raise refused from exc
            failed = failed_because(
                connection.name, "could not open a session for this client", exc, connection.secrets
            )
            _open_log.warning(connection.name, "%s", failed.detail)  # its client is told only what happened
            raise failed from exc
        return session

    async def _run(self, session: DedicatedSession, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await session.run(task_status=task_status)
        except Exception as exc:
            if not session.served:
                raise  # `task_group.start` hands it to the opener
            reason = session.connection.describe(exc)
            logger.info("backend %s: a client's dedicated session ended: %s", session.name, reason)
        finally:
            self._sessions.discard(session)

    def stop(self) -> None:
        for session in list(self._sessions):
            session.close()
