"""One long-lived MCP client session to one backend, and what that backend offers.

A `BackendConnection` runs as a task: it opens the transport, negotiates the protocol era (the
2026-07-28 discover probe, falling back to the 2025-11-25 handshake), fetches tools, resources,
resource templates and prompts, and then serves calls until it is stopped. Change notifications
(`list_changed`, or a `subscriptions/listen` stream on modern backends) re-fetch the backend and
tell the owner through `on_change`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.client._probe import negotiate_auto
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.subscriptions import listen
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from vmcp_opt import __version__
from vmcp_opt.backends.transports import open_transport
from vmcp_opt.config import BackendConfig

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT", bound=BaseModel)
ChangeCallback = Callable[["BackendConnection"], Awaitable[None]]

CLIENT_INFO = types.Implementation(name="vmcp-opt", version=__version__)


class BackendState(StrEnum):
    CONNECTING = "connecting"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


class BackendUnavailable(Exception):
    """The backend cannot take requests now; the message names it and says why."""


@dataclass
class BackendListing:
    tools: list[types.Tool] = field(default_factory=list)
    resources: list[types.Resource] = field(default_factory=list)
    resource_templates: list[types.ResourceTemplate] = field(default_factory=list)
    prompts: list[types.Prompt] = field(default_factory=list)


class BackendConnection:
    def __init__(
        self,
        config: BackendConfig,
        *,
        base_dir: Path,
        connect_timeout: float,
        call_timeout: float,
        on_change: ChangeCallback | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.base_dir = base_dir
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.on_change = on_change
        self.state = BackendState.CONNECTING
        self.last_error: str | None = None
        self.state_since = time.time()
        self.listing = BackendListing()
        self.server_info: types.Implementation | None = None
        self.protocol_version: str | None = None
        self.capabilities: types.ServerCapabilities | None = None
        self._session: ClientSession | None = None
        self._stop = anyio.Event()
        self._ready = anyio.Event()
        self._refresh_lock = anyio.Lock()
        self._task_group: anyio.abc.TaskGroup | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and serve until `stop()`; on failure, record the error and return."""
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_group.start_soon(self._connect_deadline, task_group.cancel_scope)
                await self._serve()
                task_group.cancel_scope.cancel()
        except Exception as exc:  # any failure of one backend must not take the gateway down
            self._set_state(BackendState.FAILED, _describe_error(exc))
        finally:
            self._session = None
            self._ready.set()
            if self.state is not BackendState.FAILED:
                self._set_state(BackendState.CLOSED)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def stop(self) -> None:
        self._stop.set()

    async def _connect_deadline(self, scope: anyio.CancelScope) -> None:
        with anyio.move_on_after(self.connect_timeout):
            await self._ready.wait()
            return
        if self.state is BackendState.CONNECTING:
            self._set_state(BackendState.FAILED, f"did not connect within {self.connect_timeout:g}s")
            scope.cancel()

    async def _serve(self) -> None:
        async with (
            open_transport(self.config, self.base_dir, self.connect_timeout) as (read, write),
            ClientSession(read, write, message_handler=self._on_message, client_info=CLIENT_INFO) as session,
        ):
            await negotiate_auto(session)
            self._session = session
            self.protocol_version = session.protocol_version
            self.server_info = session.server_info
            self.capabilities = session.server_capabilities
            self.listing = await self._fetch_listing(session)
            self._set_state(BackendState.READY)
            self._ready.set()
            logger.info(
                "backend %s ready (%s, protocol %s): %d tools, %d resources, %d templates, %d prompts",
                self.name,
                self.config.transport,
                self.protocol_version,
                len(self.listing.tools),
                len(self.listing.resources),
                len(self.listing.resource_templates),
                len(self.listing.prompts),
            )
            if self.protocol_version in MODERN_PROTOCOL_VERSIONS and self._task_group is not None:
                self._task_group.start_soon(self._listen_for_changes, session)
            await self._stop.wait()

    def _set_state(self, state: BackendState, error: str | None = None) -> None:
        if state is not self.state:
            if error:
                logger.warning("backend %s %s: %s", self.name, state.value, error)
            else:
                logger.debug("backend %s %s", self.name, state.value)
            self.state_since = time.time()
        self.state = state
        if error is not None:
            self.last_error = error

    # --- discovery and change notifications ------------------------------------------------------

    async def _fetch_listing(self, session: ClientSession) -> BackendListing:
        capabilities = session.server_capabilities
        listing = BackendListing()
        if capabilities is None or capabilities.tools is not None:
            listing.tools = await _paginate(session.list_tools, "tools")
        if capabilities is not None and capabilities.resources is not None:
            listing.resources = await _paginate(session.list_resources, "resources")
            listing.resource_templates = await _paginate(session.list_resource_templates, "resource_templates")
        if capabilities is not None and capabilities.prompts is not None:
            listing.prompts = await _paginate(session.list_prompts, "prompts")
        return listing

    async def refresh(self) -> None:
        """Re-fetch everything the backend offers and tell the owner."""
        session = self._session
        if session is None:
            return
        async with self._refresh_lock:
            try:
                self.listing = await self._fetch_listing(session)
            except (MCPError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                logger.warning("backend %s: re-fetch after a change failed: %s", self.name, exc)
                return
        logger.info("backend %s changed: now %d tools", self.name, len(self.listing.tools))
        if self.on_change is not None:
            await self.on_change(self)

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            logger.warning("backend %s transport error: %s", self.name, message)
            return
        if (
            isinstance(
                message,
                types.ToolListChangedNotification
                | types.ResourceListChangedNotification
                | types.PromptListChangedNotification,
            )
            and self._task_group is not None
        ):
            self._task_group.start_soon(self.refresh)

    async def _listen_for_changes(self, session: ClientSession) -> None:
        """Modern (2026-07-28) backends deliver list changes only on a `subscriptions/listen` stream."""
        try:
            async with listen(
                session, tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True
            ) as subscription:
                async for _event in subscription:
                    await self.refresh()
        except Exception as exc:  # a backend without listen support still serves calls
            logger.debug("backend %s: no change subscription: %s", self.name, exc)

    # --- requests --------------------------------------------------------------------------------

    def _require_session(self) -> ClientSession:
        if self._session is None or self.state is not BackendState.READY:
            reason = f": {self.last_error}" if self.last_error else ""
            raise BackendUnavailable(f"backend '{self.name}' is {self.state.value}{reason}")
        return self._session

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        meta: types.RequestParamsMeta | None = None,
        progress_callback: ProgressFnT | None = None,
    ) -> types.CallToolResult:
        params = types.CallToolRequestParams(name=name, arguments=arguments, _meta=meta)
        return await self.request(
            types.CallToolRequest(params=params), types.CallToolResult, progress_callback=progress_callback
        )

    async def request(
        self,
        request: types.Request[Any, Any],
        result_type: type[ResultT],
        *,
        progress_callback: ProgressFnT | None = None,
    ) -> ResultT:
        """Forward any request; the backend's result model comes back unchanged."""
        session = self._require_session()
        try:
            return await session.send_request(
                request,  # type: ignore[arg-type]
                result_type,
                request_read_timeout_seconds=self.call_timeout,
                progress_callback=progress_callback,
            )
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise BackendUnavailable(f"backend '{self.name}' connection lost: {_describe_error(exc)}") from exc

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "transport": self.config.transport,
            "state": self.state.value,
            "since": self.state_since,
            "last_error": self.last_error,
            "protocol_version": self.protocol_version,
            "server": self.server_info.name if self.server_info else None,
            "tools": len(self.listing.tools),
            "resources": len(self.listing.resources),
            "resource_templates": len(self.listing.resource_templates),
            "prompts": len(self.listing.prompts),
        }


async def _paginate(list_method: Callable[..., Awaitable[Any]], attribute: str) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(1000):  # a backend that never stops paginating must not hang discovery
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await list_method(params=params)
        items.extend(getattr(page, attribute))
        cursor = page.next_cursor
        if not cursor:
            break
    return items


def _describe_error(exc: BaseException) -> str:
    """A one-line reason, unwrapping exception groups from task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, MCPError | BackendUnavailable) else text
