"""Backend sessions dedicated to one front client, for what one shared session cannot route.

A backend's `sampling/createMessage`, `elicitation/create`, `roots/list`, log messages and
`resources/updated` carry nothing that says which client caused them, so a session shared by all
clients cannot deliver them. A `DedicatedSession` is a backend session opened for one front client:
it speaks the 2025-11-25 handshake (the era with server-to-client requests), advertises exactly the
capabilities the front client has, and hands everything the backend sends to that client's callbacks.
The `SessionPool` runs them in the gateway's task group and closes them when their client goes away.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.abc
import mcp_types as types
from mcp.client._probe import negotiate_auto
from mcp.client.session import (
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

from vmcp_opt.backends.connection import (
    CLIENT_INFO,
    BackendConnection,
    BackendUnavailable,
    is_list_changed,
)
from vmcp_opt.backends.credentials import BackendAuth
from vmcp_opt.backends.errors import CredentialError
from vmcp_opt.backends.forwarding import HeaderWriteStream, forwarding
from vmcp_opt.backends.http_bodies import as_internal_error
from vmcp_opt.backends.listing import WatchedReadStream
from vmcp_opt.backends.results import bounded_result
from vmcp_opt.backends.transports import open_transport

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT", bound=BaseModel)
CLOSE_TIMEOUT = 5.0  # seconds a closing session may take to shut its transport


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
        self.callbacks = callbacks
        # Whether the backend may send this client anything (requests, logs, updates): the 2025-11-25 era then.
        self._relays = auth is None or any(
            c is not None for c in (callbacks.sampling, callbacks.elicitation, callbacks.list_roots, callbacks.logging)
        )
        self.closed = False
        self.served = False
        self.ended = False  # its transport's read stream ended: the backend process exited or the stream broke
        self._session: ClientSession | None = None
        self._stop = anyio.Event()
        self._done = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open, handshake, report started, and serve until `close()` or the backend goes away."""
        callbacks = self.callbacks
        auth = self.auth = self.auth or self.connection.credentials.service()
        try:
            await auth.prepare()
            async with (
                open_transport(
                    self.connection.config,
                    self.connection.base_dir,
                    self.connection.connect_timeout,
                    auth,
                    max_result_bytes=self.connection.limits.max_result_bytes,
                ) as (
                    read,
                    write,
                ),
                _MirroringClientSession(
                    WatchedReadStream(read, self._on_stream_end),
                    HeaderWriteStream(write),
                    sampling_callback=callbacks.sampling,
                    elicitation_callback=callbacks.elicitation,
                    list_roots_callback=callbacks.list_roots,
                    logging_callback=callbacks.logging,
                    message_handler=self._on_message,
                    client_info=CLIENT_INFO,
                    mirrored=callbacks.capabilities,
                ) as session,
            ):
                with anyio.fail_after(self.connection.connect_timeout):
                    if self._relays:
                        await session.initialize()
                    else:  # only the caller's credentials: whichever era the backend speaks best, as the shared one
                        await negotiate_auto(session)
                self._session = session
                self.served = True
                task_status.started()
                await self._stop.wait()
        finally:
            self.closed = True
            self._session = None
            self._done.set()

    def _on_stream_end(self) -> None:
        # The backend process exited (or its stream broke): this session can serve nothing more. Ending it marks
        # it `closed`, so its client's next call opens a new one instead of failing "Connection closed" on the
        # dead one until the client goes away (and feeding the backend's circuit, for every client, meanwhile).
        self.ended = self.closed = True
        self._stop.set()

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
        if self.callbacks.notification is not None:
            await self.callbacks.notification(message)

    def close(self) -> None:
        self._stop.set()

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
        try:
            with forwarding(headers):
                result = await session.send_request(
                    request,  # type: ignore[arg-type]
                    result_type,
                    request_read_timeout_seconds=self.connection.call_timeout if timed else None,
                    progress_callback=progress_callback,
                )
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream) as exc:
            raise BackendUnavailable(f"backend '{self.name}' connection lost: {type(exc).__name__}") from exc
        except MCPError as exc:
            refused = self.auth.refusal() if self.auth is not None else None
            if refused is not None:
                raise refused from exc
            over_cap = as_internal_error(exc)
            if over_cap is not None:
                raise over_cap from None
            raise
        return bounded_result(self.name, result, self.connection.limits.max_result_bytes)

    async def notify(self, notification: types.ClientNotification) -> None:
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
            raise BackendUnavailable(
                f"backend '{connection.name}': could not open a session for this client: {_reason(exc)}"
            ) from exc
        return session

    async def _run(self, session: DedicatedSession, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await session.run(task_status=task_status)
        except Exception as exc:
            if not session.served:
                raise  # `task_group.start` hands it to the opener
            logger.info("backend %s: a client's dedicated session ended: %s", session.name, _reason(exc))
        finally:
            self._sessions.discard(session)

    def stop(self) -> None:
        for session in list(self._sessions):
            session.close()


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
