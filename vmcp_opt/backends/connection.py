"""One long-lived MCP client session to one backend, and what that backend offers.

A `BackendConnection` runs as a task: it opens the transport, negotiates the protocol era (the
2026-07-28 discover probe, falling back to the 2025-11-25 handshake), fetches tools, resources,
resource templates and prompts, and then serves calls until it is stopped. Change notifications
(`list_changed`, or a `subscriptions/listen` stream on modern backends) re-fetch the backend and
tell the owner through `on_change`; a burst of them costs one re-fetch, and re-fetches are at least
`limits.list_changed_interval` apart and paced by their cost (`limits.list_changed_pace`). A listing page
that fails validation because of some of its items (a tool whose `inputSchema` is not an object, say) is
fetched again with those items dropped, each with a warning (at most 20 a listing), so one bad tool never
fails its backend. Results larger than `limits.max_result_bytes` become
errors (results.py).

Every message a session receives is counted by backend and kind (backends/inbound.py: the metric
`vmcp_backend_messages`, and a warning a minute for a flood of them).

A lost session (the stdio process died, the stream closed, its stdout was junk, or the health checker asked for it
through `reconnect`) is re-established with exponential backoff and jitter (`failure.restart`);
a stdio backend's process is started again; an outage logs a few lines, not two per attempt
(reconnect_log.py). `on_change` also runs when the backend leaves or rejoins service, so the catalogue
follows it.

Past ~450 lines on purpose: connecting, re-fetching on change and sending requests all read and write the
one session, its state and its wake-up events; split into modules, each part would reach into the others'
attributes.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import mcp_types as types
from anyio.abc import TaskGroup
from mcp.client._probe import negotiate_auto
from mcp.client.session import ClientRequestContext, ClientSession, IncomingMessage
from mcp.client.subscriptions import listen
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, TypeAdapter, ValidationError

from vmcp_opt import __version__
from vmcp_opt.backends.backend_requests import bounded_backend_requests
from vmcp_opt.backends.big_requests import as_given
from vmcp_opt.backends.credentials import BackendAuth, BackendCredentials
from vmcp_opt.backends.errors import BackendUnavailable as BackendUnavailable  # re-exported
from vmcp_opt.backends.errors import (
    NotReady,
    ProcessExited,
    ProcessLost,
    closed_by_exit_when_seen,
    describe_error,
    failure_reason,
    with_stderr_line,
)
from vmcp_opt.backends.forwarding import HeaderWriteStream, forwarding
from vmcp_opt.backends.http_bodies import as_internal_error
from vmcp_opt.backends.inbound import CountedReadStream, InboundMessages
from vmcp_opt.backends.listing import BackendListing, WatchedReadStream, fetch_listing
from vmcp_opt.backends.reconnect_log import ReconnectLog
from vmcp_opt.backends.relay_bounds import coalesced
from vmcp_opt.backends.results import measured_result
from vmcp_opt.backends.secrets import mask_url, redact, secret_values, with_escaped_forms
from vmcp_opt.backends.stdio import BrokenOutput, measures_results
from vmcp_opt.backends.transports import StderrTail, open_transport
from vmcp_opt.config import BackendConfig, LimitsConfig, RestartConfig
from vmcp_opt.display import shorten

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT", bound=BaseModel)
# Seconds a session must have served for its loss to restart the backoff at `failure.restart.initial_delay`.
STABLE_SESSION = 60.0
# Seconds an HTTP session's close (its DELETE) may take before the connection stops waiting for it.
SESSION_CLOSE_TIMEOUT = 5.0
_STREAM_ENDED = "the connection closed (process exited or stream ended)"
ChangeCallback = Callable[["BackendConnection"], Awaitable[None]]


class SessionWatcher(Protocol):
    """Told of each shared session that reaches READY and of what it receives besides list changes
    (backends/resource_updates.py: the gateway's own resource subscriptions)."""

    async def session_ready(self, connection: BackendConnection, session: ClientSession) -> None:
        """Runs in the session's task group: cancelled when that session ends."""
        ...

    async def notified(self, connection: BackendConnection, message: types.ServerNotification) -> None: ...


CLIENT_INFO = types.Implementation(name="vmcp-opt", version=__version__)


class BackendState(StrEnum):
    CONNECTING = "connecting"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


class BackendConnection:
    def __init__(
        self,
        config: BackendConfig,
        *,
        base_dir: Path,
        connect_timeout: float,
        call_timeout: float,
        on_change: ChangeCallback | None = None,
        restart: RestartConfig | None = None,
        limits: LimitsConfig | None = None,
    ) -> None:
        self.config = config
        self.restart = restart
        self.limits = limits or LimitsConfig()
        self.credentials = BackendCredentials(config, base_dir)
        self._configured_secrets = secret_values(config)
        self._secrets = (-1, self._configured_secrets)  # (the learnt secrets' version, all of them)
        self._auth: BackendAuth | None = None  # the shared session's
        self.name = config.name
        self.base_dir = base_dir
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.on_change = on_change
        self.state = BackendState.CONNECTING
        self.last_error: str | None = None
        self._outage = ReconnectLog(self.name)  # what a backend that stays down logs (not two lines an attempt)
        self.state_since = time.time()
        self.listing = BackendListing()
        self.server_info: types.Implementation | None = None
        self.protocol_version: str | None = None
        self.capabilities: types.ServerCapabilities | None = None
        self._session: ClientSession | None = None
        self._stop = anyio.Event()
        self._ready = anyio.Event()  # set once the first attempt has connected or failed
        self._wake = anyio.Event()  # ends the current session: stop, or the session was lost
        self._connected = anyio.Event()  # this session reached READY
        self._ended = anyio.Event()  # this session is over (a stdio process's exit status is known)
        self._lost_reason: str | None = None
        # The session `reconnect` is ending, and why (as its clients are told, in full): what a call it carried fails with.
        self._restarted: tuple[ClientSession, str, str] | None = None
        # Sessions established so far (the health monitor sees a reconnect as a new number).
        self.sessions = 0
        self.restarts = 0
        self.next_attempt_at: float | None = None
        self._ready_at: float | None = None  # when the current (or last) session reached READY (monotonic)
        self._refresh_lock = anyio.Lock()
        self._refresh_wanted = anyio.Event()  # a change was announced and not yet re-fetched
        self._next_refresh = -float("inf")  # when a re-fetch may start again (`_refresh_when_asked`)
        self._task_group: TaskGroup | None = None
        self._stream: WatchedReadStream | None = None
        self._stderr = StderrTail()  # this attempt's process (stdio)
        self._step = "the handshake"  # what this attempt waits for, for a connect timeout's message
        self._watchers: list[SessionWatcher] = []
        self.inbound = InboundMessages(self.name)  # what its sessions received, by kind (all sessions: a counter)

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and serve until `stop()`; a lost session is re-established with backoff."""
        attempt = 0
        while not self._stop.is_set():
            served = await self._run_session()
            if served:
                if self._served_for() >= STABLE_SESSION:
                    # Only a session that lasted starts the backoff afresh: one that dies right after its handshake
                    # (a crash on a first request, a timer) restarted at `initial_delay` every time, for ever.
                    attempt = 0
                if self.on_change is not None:
                    await self.on_change(self)  # out of service: its tools leave the catalogue
            if self._stop.is_set() or self.restart is None or not self.restart.enabled:
                break
            delay = backoff_delay(self.restart, attempt)
            attempt += 1
            self.next_attempt_at = time.time() + delay
            self._outage.retrying(delay, attempt)
            with anyio.move_on_after(delay):
                await self._stop.wait()
            self.next_attempt_at = None
            self.restarts += 1
        self._ready.set()
        if self.state is not BackendState.FAILED:
            self._set_state(BackendState.CLOSED)

    async def _run_session(self) -> bool:
        """One session from connect to loss or stop; True if it reached READY."""
        self._wake = anyio.Event()
        self._connected = anyio.Event()
        self._ended = anyio.Event()
        self._lost_reason = None
        self._stderr = StderrTail()
        if self._stop.is_set():
            return False
        self._wake_on_stop()
        if self.state is not BackendState.CONNECTING:
            self._set_state(BackendState.CONNECTING)
        sessions_before = self.sessions
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_group.start_soon(self._connect_deadline, task_group.cancel_scope)
                await self._serve()
                task_group.cancel_scope.cancel()
        except Exception as exc:  # any failure of one backend must not take the gateway down
            refused = self._auth.refusal() if self._auth is not None else None
            self._set_state(
                BackendState.FAILED,
                with_stderr_line(
                    self._at_url(failure_reason(refused or exc, self.config.command, self.secrets)), self._stderr.line
                ),
            )
        finally:
            self._session = None
            self._task_group = None
            self._ready.set()
            self._ended.set()
        if self.state in (BackendState.READY, BackendState.CONNECTING) or self._restarted is not None:
            self._restarted = None
            if self._stop.is_set():
                self._set_state(BackendState.CLOSED)
            else:
                self._set_state(BackendState.FAILED, with_stderr_line(self._loss(), self._stderr.line))
        return self.sessions > sessions_before

    def _loss(self) -> str:
        """Why a session that was READY ended; a stdio process that ended its stdout and exited before the shutdown
        (a crash, `kill -9`) says with what status, as one that dies at start does."""
        status = self._stderr.exit_status
        if status is not None and self._lost_reason in (None, _STREAM_ENDED):
            return str(ProcessExited(status))
        return self._lost_reason or "the session ended"

    def _served_for(self) -> float:
        """Seconds the last session was READY."""
        return time.monotonic() - self._ready_at if self._ready_at is not None else 0.0

    def _wake_on_stop(self) -> None:
        if self._stop.is_set():
            self._wake.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def first_attempt_pending(self) -> bool:
        """Still on its first connection attempt: neither ready nor failed yet."""
        return not self._ready.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def reconnect(self, reason: str, *, told: str | None = None) -> None:
        """End the current session (the stdio process is stopped) and connect again with backoff. `told`: why, as
        the clients of the calls it cuts off are told (`reason`, for the log and /readyz, may quote the backend)."""
        if self._session is not None and not self._wake.is_set():
            self._lost_reason = reason
            self._restarted = (self._session, told or "its health checks failed", reason)
            self._wake.set()
            # Out of service now, not once the old session has shut down: stopping a hung process takes seconds
            # (stdin closed, SIGTERM, SIGKILL), and calls routed to it meanwhile failed with a bare "Connection
            # closed" that fed its circuit; now they are refused naming the reason.
            self._set_state(BackendState.FAILED, reason)

    async def _connect_deadline(self, scope: anyio.CancelScope) -> None:
        with anyio.move_on_after(self.connect_timeout):
            async with anyio.create_task_group() as first:

                async def wait_for(event: anyio.Event) -> None:
                    await event.wait()
                    first.cancel_scope.cancel()

                first.start_soon(wait_for, self._connected)
                first.start_soon(wait_for, self._wake)
            if self._wake.is_set() and not self._connected.is_set():
                scope.cancel()  # stopped while connecting
            return
        if self.state is BackendState.CONNECTING:
            reason = f"did not connect within {self.connect_timeout:g}s (no answer to {self._step})"
            self._set_state(BackendState.FAILED, self._at_url(reason))
            scope.cancel()

    async def _serve(self) -> None:
        self._stream = WatchedReadStream(None, self._on_stream_end)
        self._step = "its credentials (the token endpoint)"
        self._auth = auth = self.credentials.service()
        await auth.prepare()  # a token endpoint that refuses fails the connection with its own reason
        self._step = "the handshake"
        with bounded_close(self.config.transport, f"backend {self.name}: its last session") as close:
            async with (
                open_transport(
                    self.config,
                    self.base_dir,
                    self.connect_timeout,
                    auth,
                    max_result_bytes=self.limits.max_result_bytes,
                    max_result_values=self.limits.max_result_values,
                    stderr_tail=self._stderr,
                ) as (raw_read, write),
                # The backend's own requests (ping, sampling…) bounded: the SDK holds a task for each.
                bounded_backend_requests(
                    self._stream.wrapping(CountedReadStream(raw_read, self.inbound, self._output_broken)),
                    HeaderWriteStream(write),
                    self.name,
                ) as (
                    read,
                    answers,
                ),
                _SharedClientSession(
                    read,
                    answers,
                    sampling_callback=_refused_sampling,
                    elicitation_callback=_refused_elicitation,
                    message_handler=self._on_message,
                    client_info=CLIENT_INFO,
                ) as session,
            ):
                with close.after():
                    await self._serve_session(session)

    async def _serve_session(self, session: ClientSession) -> None:
        """The handshake, the listing, then serving until the session is lost or stopped."""
        await negotiate_auto(session)
        self._session = session
        self.protocol_version = session.protocol_version
        self.server_info = session.server_info
        self.capabilities = session.server_capabilities
        # A server that completes the handshake and then never lists is not "not connecting".
        self._step = "tools/list, resources/list or prompts/list"
        self.listing = await self._fetch_listing(session)
        if self._wake.is_set():
            return
        self.sessions += 1
        self._ready_at = time.monotonic()
        # The owner builds its first catalogue from the first attempt's outcome (or waits for a late one):
        # any session that comes after that attempt ended, first or not, must announce itself.
        announce = self._ready.is_set()
        self._set_state(BackendState.READY)
        self._connected.set()
        self._ready.set()
        listing = self.listing
        self._outage.ready(
            f"({self.config.transport}, protocol {self.protocol_version}): {len(listing.tools)} tools, "
            f"{len(listing.resources)} resources, {len(listing.resource_templates)} templates, "
            f"{len(listing.prompts)} prompts"
        )
        if self._task_group is not None:
            # A change announced while this session was connecting is re-fetched now: no announcement is lost.
            self._task_group.start_soon(self._refresh_when_asked)
            if self.protocol_version in MODERN_PROTOCOL_VERSIONS:
                self._task_group.start_soon(self._listen_for_changes, session)
            for watcher in self._watchers:
                self._task_group.start_soon(watcher.session_ready, self, session)
        if announce and self.on_change is not None:
            # Back in service, or in service at last after a first attempt that failed: its tools join.
            await self.on_change(self)
        await self._wake.wait()

    def _at_url(self, reason: str) -> str:
        """A connection error of an HTTP or SSE backend names the URL it tried (credentials masked)."""
        if self.config.url is None:
            return reason
        return f"{mask_url(self.config.url)}: {reason}"

    def _output_broken(self, exc: BrokenOutput) -> None:
        """The stdio reader gave up on this session's stdout (backends/stdio.py `UnusableLines`): restart the
        backend as the health checks would, with that reason, before the stream's end reads as a plain loss."""
        self.reconnect(str(exc), told="its output was not JSON-RPC")

    def _on_stream_end(self) -> None:
        if not self._stop.is_set() and not self._wake.is_set():
            self._lost_reason = _STREAM_ENDED
            self._wake.set()

    def _set_state(self, state: BackendState, error: str | None = None) -> None:
        error = redact(error, self.secrets) if error else error
        if state is not self.state:
            if state is BackendState.FAILED:
                self._outage.failed(error or "no reason given", lost=self.state is BackendState.READY)
            elif error:
                logger.warning("backend %s %s: %s", self.name, state.value, error)
            else:
                logger.debug("backend %s %s", self.name, state.value)
            self.state_since = time.time()
        self.state = state
        if error is not None:
            self.last_error = error

    # --- discovery and change notifications ------------------------------------------------------

    async def _fetch_listing(self, session: ClientSession) -> BackendListing:
        stream = self._stream
        if stream is None:
            raise BackendUnavailable(f"backend '{self.name}' is not connected")
        version = self.protocol_version or "2025-11-25"
        return await fetch_listing(session, stream, self.name, version, self.limits.max_listed_items_per_backend)

    async def refresh(self) -> None:
        """Re-fetch everything the backend offers and tell the owner; given up after the connect timeout (the
        listing's deadline at connect too), the previous listing kept: a backend that dripped its pages, or never
        answered one, held this re-fetch, and every later one, for as long as it liked."""
        session = self._session
        if session is None:
            return
        async with self._refresh_lock:
            with anyio.move_on_after(self.connect_timeout) as deadline:
                try:
                    listing = await self._fetch_listing(session)
                except (MCPError, ValidationError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                    logger.warning("backend %s: re-fetch after a change failed: %s", self.name, shorten(str(exc), 500))
                    return
            if deadline.cancelled_caught:
                logger.warning(
                    "backend %s: re-fetch after a change did not finish within %gs (its connect timeout); "
                    "its previous listing is kept",
                    self.name,
                    self.connect_timeout,
                )
                return
            self.listing = listing
        logger.info("backend %s changed: now %d tools", self.name, len(self.listing.tools))
        if self.on_change is not None:
            await self.on_change(self)

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, BrokenOutput):
            return  # already acted on as it was read (`_output_broken`), and warned of by the reader
        if isinstance(message, Exception):
            logger.warning("backend %s transport error: %s", self.name, message)
            return
        if is_list_changed(message):
            self.refresh_soon()
            return
        for watcher in self._watchers:
            await watcher.notified(self, message)

    def watch(self, watcher: SessionWatcher) -> None:
        """Tell `watcher` of every READY session from now on, the current one included."""
        self._watchers.append(watcher)
        session, group = self._session, self._task_group
        if session is not None and group is not None and self.state is BackendState.READY:
            group.start_soon(watcher.session_ready, self, session)

    def refresh_soon(self) -> None:
        """Re-fetch in the background: a change was announced, on this session or a client's own one.

        Coalesced: announcements while a re-fetch is waiting or running add up to one more re-fetch.
        """
        self._refresh_wanted.set()

    async def _refresh_when_asked(self) -> None:
        """One re-fetch per burst of announcements, at least `limits.list_changed_interval` apart, and paced
        by their cost: after a re-fetch that took T seconds (the listing, the catalogue's rebuild, the index),
        the next waits `limits.list_changed_pace` times T. The interval alone let a backend with a huge listing
        keep the gateway re-fetching without pause (50,000 tools: ~5 s of CPU a re-fetch, one a second)."""
        while True:
            await self._refresh_wanted.wait()
            wait = self._next_refresh - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)  # the rest of the burst joins this re-fetch
            self._refresh_wanted = anyio.Event()
            started = time.monotonic()
            await self.refresh()
            took = time.monotonic() - started
            paced = took * self.limits.list_changed_pace
            self._next_refresh = max(started + self.limits.list_changed_interval, time.monotonic() + paced)
            if paced > self.limits.list_changed_interval:
                logger.info(
                    "backend %s: its re-fetch took %.2f s; the next waits at least %.2f s", self.name, took, paced
                )

    async def _listen_for_changes(self, session: ClientSession) -> None:
        """Modern (2026-07-28) backends deliver list changes only on a `subscriptions/listen` stream."""
        try:
            async with listen(
                session, tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True
            ) as subscription:
                async for _event in subscription:
                    self.refresh_soon()
        except Exception as exc:  # a backend without listen support still serves calls
            logger.debug("backend %s: no change subscription: %s", self.name, exc)

    # --- requests --------------------------------------------------------------------------------

    def _require_session(self) -> ClientSession:
        if self._session is None or self.state is not BackendState.READY:
            # Its client is told the state; its last error (hosts, paths, DSNs) goes only to the log and /readyz.
            raise NotReady(self.name, self.state.value, self.last_error)
        return self._session

    async def ping(self, seconds: float) -> None:
        """A liveness check that must be answered within `seconds`: `TimeoutError` at that deadline, whether the
        backend is slow to answer or its transport to take the ping (the SDK's own timeout starts once it is
        written); its courtesy cancel does not hold the verdict up (backends/courtesy_cancels.py).

        `ping` on the 2025-11-25 handshake; the 2026-07-28 revision has no ping, so `server/discover`.
        """
        session = self._require_session()
        if self.protocol_version in MODERN_PROTOCOL_VERSIONS:
            request: types.Request[Any, Any] = types.DiscoverRequest()
            result_type: type[BaseModel] = types.DiscoverResult
        else:
            request, result_type = types.PingRequest(), types.EmptyResult
        with anyio.fail_after(seconds):
            await session.send_request(request, result_type, request_read_timeout_seconds=seconds)

    async def request(
        self,
        request: types.Request[Any, Any],
        result_type: type[ResultT] | TypeAdapter[ResultT],
        *,
        progress_callback: ProgressFnT | None = None,
        headers: dict[str, str] | None = None,
    ) -> ResultT:
        """Forward any request; the backend's result model comes back unchanged. `headers`: the client's
        allow-listed ones, on this request's HTTP POST (streamable HTTP only)."""
        session = self._require_session()
        tail, ended = self._stderr, self._ended  # this session's: should the request lose it, why it ended
        auth = self._auth
        if auth is not None:
            await auth.prepare()
        progress = coalesced(progress_callback)
        try:
            with forwarding(headers):
                # A caller that stops waiting (its `timeouts.call` deadline, the client's cancel) returns at once: the
                # SDK's courtesy cancel does not wait for a stuck transport (backends/courtesy_cancels.py).
                result = await session.send_request(
                    as_given(request),  # type: ignore[arg-type]  # big arguments: not copied on the loop
                    result_type,
                    request_read_timeout_seconds=self.call_timeout,
                    progress_callback=progress,
                )
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise failed_because(self.name, "connection lost", exc, self.secrets) from exc
        except MCPError as exc:
            refused = auth.refusal() if auth is not None else None
            if refused is not None:
                raise refused from exc
            over_cap = as_internal_error(exc)
            if over_cap is not None:
                raise over_cap from None
            if exc.code == types.CONNECTION_CLOSED:
                restarted = self._restarted
                if restarted is not None and restarted[0] is session:
                    raise _restarted_error(exc, *restarted[1:]) from exc
                if self.config.transport == "stdio":
                    raise await closed_by_exit_when_seen(exc, tail, ended, self.secrets) from exc
            raise
        finally:
            if progress is not None:
                progress.close()  # answered or given up on: the backend's progress stops here
        cap, measured = self.limits.max_result_bytes, measures_results(self.config.transport)
        return await measured_result(self.name, result, cap, measured=measured)

    @property
    def secrets(self) -> list[str]:
        """What masks this backend's secrets in what it says: the configured ones (env and header values, URL
        credentials) and those its credentials learnt since (fetched tokens, a rotated file's content), rebuilt
        only when they learnt one."""
        learnt = self.credentials.learnt
        version, secrets = self._secrets
        if version != learnt.version:
            learnt_forms = with_escaped_forms(learnt.values())
            secrets = sorted({*self._configured_secrets, *learnt_forms}, key=len, reverse=True)  # longest first
            self._secrets = (learnt.version, secrets)
        return secrets

    def describe(self, exc: BaseException) -> str:
        """A one-line reason with this backend's secrets (`secrets`) masked."""
        return describe_error(exc, self.secrets)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "transport": self.config.transport,
            "state": self.state.value,
            "auth": self.config.auth.type,
            # The backend refused the gateway's credentials (401/403): health says `unauthenticated`.
            "refused": self.credentials.refused,
            "since": self.state_since,
            "last_error": self.last_error,
            "restarts": self.restarts,
            "next_attempt_at": self.next_attempt_at,
            "protocol_version": self.protocol_version,
            "server": shorten(self.server_info.name) if self.server_info else None,  # the backend's own text
            "tools": len(self.listing.tools),
            "resources": len(self.listing.resources),
            "resource_templates": len(self.listing.resource_templates),
            "prompts": len(self.listing.prompts),
        }


class _SharedClientSession(ClientSession):
    """Claims sampling and elicitation (never roots) on the handshake era: a server such as server-everything lists
    the tools that use them only to a client that declares them, and the catalogue is this session's listing. What
    the backend asks here is refused at once; a client that can answer has a session of its own for its calls.

    Not on the 2026-07-28 era, which has no back-channel: a backend told of sampling there asks the old way anyway
    (the SDK's servers do) and fails the call with a transport error instead of its own clear one.
    """

    def _build_capabilities(self, version: str) -> types.ClientCapabilities:
        capabilities = super()._build_capabilities(version)
        if version in MODERN_PROTOCOL_VERSIONS:
            return capabilities.model_copy(update={"sampling": None, "elicitation": None})
        return capabilities


async def _refused_sampling(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.ErrorData:
    return _not_relayed("sampling/createMessage", "sampling")


async def _refused_elicitation(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ErrorData:
    return _not_relayed("elicitation/create", "elicitation")


def _not_relayed(method: str, capability: str) -> types.ErrorData:
    """The shared session's answer to a backend's question: it serves many clients and can tell none of them."""
    return types.ErrorData(
        code=types.INVALID_REQUEST,
        message=(
            f"{method} refused: the gateway relays it only to a client that declared {capability} "
            "(this call's client did not, or has no session of its own with this backend)"
        ),
    )


def is_list_changed(message: object) -> bool:
    return isinstance(
        message,
        types.ToolListChangedNotification | types.ResourceListChangedNotification | types.PromptListChangedNotification,
    )


class CloseBound:
    """The deadline on a backend session's close, set once the session's body is over (`after`)."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.scope = anyio.CancelScope()
        self.failure: Exception | None = None  # what ended the body, re-raised if the close is given up on

    @contextlib.contextmanager
    def after(self) -> Iterator[None]:
        """Around the session's body: as it ends, however it ends, the close that follows is bounded."""
        try:
            yield
        except Exception as exc:
            self.failure = exc
            raise
        finally:
            if self.transport != "stdio":
                self.scope.deadline = anyio.current_time() + SESSION_CLOSE_TIMEOUT


@contextlib.contextmanager
def bounded_close(transport: str, what: str) -> Iterator[CloseBound]:
    """Around a backend session's transport and `ClientSession`: their close is given up on after
    `SESSION_CLOSE_TIMEOUT`. An HTTP session's close sends a DELETE whose answer the SDK waits for without a
    deadline: a backend that hangs held whoever closed it (the reconnection of the shared session; a client's
    dedicated session's task and socket) until it woke up, for ever if it never did. A stdio session's close is
    bounded, and shielded, by its own shutdown (backends/stdio.py). `what` names the session in the warning."""
    close = CloseBound(transport)
    with close.scope:
        yield close
    if close.scope.cancelled_caught:
        logger.warning(
            "%s did not close within %gs (no answer to the session's DELETE); not waiting for it",
            what,
            SESSION_CLOSE_TIMEOUT,
        )
        if close.failure is not None:
            raise close.failure


class Unavailable(NotReady):
    """A backend failure whose client is told `told`: what happened, in words, and the exception's type. The
    exception's text (hosts, paths, DSNs, a backend's words) is the `detail` the breaker, the log and /readyz read
    through `describe_error`, as a `NotReady`'s last error is (a `NotReady` for that alone)."""

    def __init__(self, told: str, detail: str) -> None:
        BackendUnavailable.__init__(self, told)
        self.detail = detail


def failed_because(backend: str, what: str, exc: BaseException, secrets: Iterable[str]) -> Unavailable:
    """`backend '<backend>' <what> (<exception type>)` for the client, the exception described (masked) beside."""
    told = f"backend '{backend}' {what} ({type(_innermost(exc)).__name__})"
    return Unavailable(told, f"backend '{backend}' {what}: {describe_error(exc, secrets)}")


def _innermost(exc: BaseException) -> BaseException:
    """The first exception inside task groups' exception groups: the one that says what happened."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _restarted_error(exc: MCPError, told: str, reason: str) -> MCPError:
    """A call cut off because the gateway restarted its backend: why, not a bare "Connection closed"; its client
    is told `told`, the breaker, the log and /readyz the whole `reason` (which quotes the failed pings). Still a
    CONNECTION_CLOSED, which counts against the circuit as the backend failing (it did not answer in time)."""
    said = f"{exc.error.message}: the gateway restarted the backend"
    return ProcessLost(exc.error.code, f"{said} ({told})", exc.error.data, f"{said} ({reason})")


def backoff_delay(config: RestartConfig, attempt: int) -> float:
    """Exponential backoff capped at `max_delay`, scaled by a random factor within ±`jitter`."""
    base = min(config.max_delay, config.initial_delay * config.multiplier**attempt)
    return base * random.uniform(1 - config.jitter, 1 + config.jitter)
