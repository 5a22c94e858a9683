"""The gateway: one MCP server whose handlers route every request to the backend that owns it."""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar

import anyio
import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged
from mcp_types.methods import INPUT_REQUIRED_METHODS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from vmcp_opt import __version__
from vmcp_opt.aggregation import BackendSource, Catalog, ConflictError, RoutedTool, build_catalog
from vmcp_opt.arguments import ArgumentError, ArgumentValidator
from vmcp_opt.backends import BackendConnection, BackendManager
from vmcp_opt.backends.connection import BackendState, BackendUnavailable
from vmcp_opt.config import VmcpConfig
from vmcp_opt.health import CircuitOpen, HealthMonitor
from vmcp_opt.server.relay import Relay
from vmcp_opt.server.round_trips import (
    BackendRound,
    InputRequired,
    PendingRound,
    input_responses,
    or_input_required,
    passed_through,
    round_of,
    state_boundary,
    with_round,
)

logger = logging.getLogger(__name__)

RESOURCE_NOT_FOUND = -32002
ResultT = TypeVar("ResultT", bound=BaseModel)
Ctx = ServerRequestContext[Any, Any]
ListKind = Literal["tools", "prompts", "resources"]
ALL_LISTS: frozenset[ListKind] = frozenset(("tools", "prompts", "resources"))


class ToolFront(Protocol):
    """What clients see in place of the catalogue's tools (the optimizer's meta-tools)."""

    def visible_tools(self, catalog: Catalog) -> list[types.Tool]: ...

    def handles(self, name: str) -> bool: ...

    async def call(self, ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult: ...

    async def catalog_changed(self, catalog: Catalog) -> None: ...

    def tool_used(self, client: object, name: str) -> None:
        """A routed call of `name` succeeded for `client` (an object that lives as long as the client)."""
        ...

    def close(self) -> None:
        """The gateway is stopping: write what must outlive it."""
        ...


class StartupError(Exception):
    """`failure.mode: fail` and some backends did not connect; the message names them."""


class _GatewayServer(Server[Any]):
    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        # The catalogue changes when backends do: advertise list_changed for all three lists.
        return super().create_initialization_options(
            notification_options
            or NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True),
            experimental_capabilities,
            extensions,
        )


class Gateway:
    def __init__(self, config: VmcpConfig) -> None:
        self.config = config
        self.backends = BackendManager(config)
        # Health checks and circuit breakers; every routed call goes through `health.guarded`, whichever session.
        self.health = HealthMonitor(self.backends, config)
        # Backend sessions of clients that need their own (sampling, elicitation, roots, logs, subscriptions).
        self.relay = Relay(
            self.backends.ready,
            self.health.guarded,
            input_timeout=config.timeouts.input,
            max_pending=config.server.max_pending_calls,
            spares=config.server.round_trip_spares,
        )
        self.catalog = Catalog()
        # Every tool name any catalogue has held, with its backend: a call to a tool whose backend is down
        # (restarting, unhealthy) is told so, rather than that the tool does not exist.
        self._known_tools: dict[str, str] = {}
        self.front: ToolFront | None = None
        self.started = False
        # A backend changed after the first catalogue was built but before `started`: rebuild once started.
        self._changed_while_starting = False
        # Identities of 2026-07-28 HTTP clients, by credential, for learning which tools go together.
        self._credentials = Credentials()
        # A failure found after serving began (a name conflict while connecting in the background).
        self.fatal: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None
        # Cancelled by `stop`, so a shutdown during start-up never goes on to start health checks.
        self._background_connect: anyio.CancelScope | None = None
        self._stopping = False
        self._validator = ArgumentValidator()
        # One Connection per client (a ServerSession lives only as long as one request).
        self._clients: weakref.WeakSet[Connection] = weakref.WeakSet()
        # 2026-07-28 clients hear about changes on `subscriptions/listen` streams fed by this bus.
        self._subscriptions = InMemorySubscriptionBus()
        self.backends.add_listener(self._on_backend_change)
        self.server = self._build_server()

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Connect every backend and build the catalogue.

        Raises `ConflictError` on an unresolvable name, and `StartupError` under `failure.mode: fail`
        when a backend could not connect.
        """
        self.relay.attach(task_group)
        if self.front is not None and self.config.failure.mode == "best_effort":
            # With the optimizer on, tools/list is the meta-tools, which need no backend: serve at once
            # and let the catalogue (and find_tool's index) fill in as the backends connect.
            task_group.start_soon(self._connect_in_background, task_group, name="connect-backends")
            return
        await self._connect_and_build(task_group)

    async def _connect_in_background(self, task_group: anyio.abc.TaskGroup) -> None:
        try:
            with anyio.CancelScope() as self._background_connect:
                if self._stopping:
                    return
                await self._connect_and_build(task_group)
        except (ConflictError, StartupError) as exc:
            self.fatal = exc
            logger.error("cannot serve: %s", exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    async def _connect_and_build(self, task_group: anyio.abc.TaskGroup) -> None:
        await self.backends.start(task_group)
        down = self.backends.not_ready()
        if down and self.config.failure.mode == "fail":
            self.backends.stop()
            names = "; ".join(f"{c.name} ({c.last_error or c.state.value})" for c in down)
            message = f"failure.mode is fail and these backends could not connect: {names}"
            logger.error("cannot start: %s", message)
            raise StartupError(message)
        task_group.start_soon(self.health.run, name="health")
        self._changed_while_starting = False
        self._set_catalog(self._build_catalog())
        if self.front is not None:
            await self.front.catalog_changed(self.catalog)
        self.started = True
        if self._changed_while_starting:
            # e.g. a backend lost while the index took the first catalogue: its tools must leave now,
            # not at its next change.
            await self._rebuild_catalog()
        await self.notify_list_changed()  # clients that connected while the backends were connecting
        logger.info(
            "catalogue: %d tools, %d prompts, %d resources, %d resource templates",
            len(self.catalog.tools),
            len(self.catalog.prompts),
            len(self.catalog.resources),
            len(self.catalog.templates),
        )

    def stop(self) -> None:
        self._stopping = True
        if self._background_connect is not None:
            self._background_connect.cancel()
        self.relay.stop()
        self.health.stop()
        self.backends.stop()
        if self.front is not None:
            self.front.close()

    def _build_catalog(self) -> Catalog:
        return catalog_of(self.backends, self.config)

    def _set_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._known_tools.update((name, routed.backend) for name, routed in catalog.tools.items())

    async def _on_backend_change(self, connection: BackendConnection) -> None:
        self.relay.backend_changed(connection)  # its spare sessions from before a reconnect are stale
        if not self.started:
            self._changed_while_starting = True
            return  # `start` builds the catalogue once every backend has answered
        if self._stopping:
            # Backends stop one by one: shrinking the catalogue would drop their vectors from the
            # persisted index, and the next start would embed them all again.
            return
        await self._rebuild_catalog(connection.name)

    async def _rebuild_catalog(self, changed: str | None = None) -> None:
        try:
            catalog = self._build_catalog()
        except ConflictError as exc:
            logger.error(
                "backend %s changed into a conflict; keeping the previous catalogue: %s", changed or "a backend", exc
            )
            return
        previous = self.catalog
        self._set_catalog(catalog)
        if self.front is not None:
            await self.front.catalog_changed(catalog)
        await self.notify_list_changed(self._changed_lists(previous, catalog))

    def _changed_lists(self, old: Catalog, new: Catalog) -> frozenset[ListKind]:
        """Which lists a client would see differently: with the optimizer on, tools/list shows the
        meta-tools and pinned tools only, so a backend's tool change alone changes nothing there."""
        changed: set[ListKind] = set()
        if self._visible_tools(old) != self._visible_tools(new):
            changed.add("tools")
        if [r.prompt for r in old.prompts.values()] != [r.prompt for r in new.prompts.values()]:
            changed.add("prompts")
        old_resources = ([r.resource for r in old.resources.values()], [t.template for t in old.templates])
        if old_resources != ([r.resource for r in new.resources.values()], [t.template for t in new.templates]):
            changed.add("resources")
        return frozenset(changed)

    def _visible_tools(self, catalog: Catalog) -> list[types.Tool]:
        if self.front is not None:
            return self.front.visible_tools(catalog)
        return [routed.tool for routed in catalog.tools.values()]

    async def notify_list_changed(self, kinds: frozenset[ListKind] = ALL_LISTS) -> None:
        """Tell every connected client which of tools, prompts and resources changed."""
        if not kinds:
            return
        events: dict[ListKind, ToolsListChanged | PromptsListChanged | ResourcesListChanged] = {
            "tools": ToolsListChanged(),
            "prompts": PromptsListChanged(),
            "resources": ResourcesListChanged(),
        }
        for kind in sorted(kinds):
            await self._subscriptions.publish(events[kind])
        for client in list(self._clients):
            if client.protocol_version in MODERN_PROTOCOL_VERSIONS or not client.has_standalone_channel:
                continue  # modern clients are told through the bus above
            sends = {
                "tools": client.send_tool_list_changed,
                "prompts": client.send_prompt_list_changed,
                "resources": client.send_resource_list_changed,
            }
            for kind in sorted(kinds):
                try:
                    await sends[kind]()
                except Exception as exc:  # a client gone away must not stop the others being told
                    logger.debug("list_changed not delivered to a client: %r", exc)
                    break

    # --- the MCP server --------------------------------------------------------------------------

    def _build_server(self) -> Server[Any]:
        server = _GatewayServer(
            "vmcp-opt",
            version=__version__,
            instructions="A virtual MCP server: the tools, prompts and resources of several MCP servers behind one endpoint.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
            on_completion=self._complete,
            on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe,
            on_subscriptions_listen=ListenHandler(self._subscriptions),
        )
        # Registered here rather than as constructor arguments, which warn that both are deprecated in 2026-07-28.
        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self.relay.set_level)
        server.add_notification_handler(
            "notifications/roots/list_changed", types.NotificationParams, self.relay.roots_changed
        )
        server.middleware.append(self._track_session)
        # Seals the request_state of every InputRequiredResult handed out, verifies it on the retry.
        server.middleware.append(state_boundary(self.config.timeouts.input))
        return server

    async def _track_session(self, ctx: Ctx, call_next: CallNext) -> HandlerResult:
        self._clients.add(ctx.session._connection)
        return await call_next(ctx)

    async def _list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self._visible_tools(self.catalog))

    async def _call_tool(
        self, ctx: Ctx, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        try:
            if self.front is not None and self.front.handles(params.name):
                return await self.front.call(ctx, params)
            return await self.call_routed(ctx, params.name, params.arguments, params.meta)
        except InputRequired as asked:
            return asked.result

    def lookup_tool(self, name: str) -> RoutedTool:
        """The routed tool; `BackendUnavailable` when its backend is down, MCPError when there is no such tool."""
        routed = self.catalog.tools.get(name)
        if routed is not None:
            return routed
        backend = self._known_tools.get(name)
        connection = self.backends.get(backend) if backend is not None else None
        if connection is not None and connection.state is not BackendState.READY:
            reason = f" ({connection.last_error})" if connection.last_error else ""
            raise BackendUnavailable(
                f"tool '{name}' is served by backend '{backend}', which is {connection.state.value}{reason}; "
                "it is listed again once the backend is back"
            )
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: '{name}'")

    async def call_routed(
        self, ctx: Ctx | None, name: str, arguments: dict[str, Any] | None, meta: types.RequestParamsMeta | None = None
    ) -> types.CallToolResult:
        """Validate and send a call to the backend that owns `name`, under its original name."""
        try:
            routed = self.lookup_tool(name)
        except BackendUnavailable as exc:
            return _error_result(str(exc))
        try:
            self._validator.check(name, routed.tool.input_schema, arguments)
        except ArgumentError as exc:
            return _error_result(str(exc))
        self._connection(routed.backend)
        params = types.CallToolRequestParams(
            name=routed.original_name, arguments=arguments, _meta=_forwarded_meta(meta)
        )
        try:
            # An InputRequired round raises through here: only its final result is a use of the tool.
            result = await self._send(
                ctx,
                routed.backend,
                types.CallToolRequest(params=params),
                types.CallToolResult,
                progress_callback=_progress_relay(ctx, meta),
            )
        except (BackendUnavailable, CircuitOpen) as exc:
            return _error_result(str(exc))
        except MCPError as exc:
            if exc.code in (types.CONNECTION_CLOSED, types.REQUEST_TIMEOUT):
                return _error_result(f"backend '{routed.backend}': {exc.error.message}")
            raise
        if self.front is not None and ctx is not None and not result.is_error:
            client = client_identity(ctx, self._credentials)
            if client is not None:
                self.front.tool_used(client, name)
        return result

    def _connection(self, backend: str) -> BackendConnection:
        connection = self.backends.get(backend)
        if connection is None:
            raise MCPError(types.INTERNAL_ERROR, f"backend '{backend}' is not configured")
        return connection

    async def _list_prompts(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=[routed.prompt for routed in self.catalog.prompts.values()])

    async def _get_prompt(
        self, ctx: Ctx, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        routed = self.catalog.prompts.get(params.name)
        if routed is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: '{params.name}'")
        forwarded = params.model_copy(update={"name": routed.original_name, "request_state": None})
        try:
            return await self._forward(
                ctx, routed.backend, types.GetPromptRequest(params=forwarded), types.GetPromptResult
            )
        except InputRequired as asked:
            return asked.result

    async def _list_resources(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[routed.resource for routed in self.catalog.resources.values()])

    async def _list_resource_templates(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[routed.template for routed in self.catalog.templates]
        )

    async def _read_resource(
        self, ctx: Ctx, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        backend = self.catalog.route_resource(str(params.uri))
        if backend is None:
            raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: '{params.uri}'", {"uri": str(params.uri)})
        forwarded = params.model_copy(update={"request_state": None})
        try:
            return await self._forward(
                ctx, backend, types.ReadResourceRequest(params=forwarded), types.ReadResourceResult
            )
        except InputRequired as asked:
            return asked.result

    async def _complete(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            routed = self.catalog.prompts.get(ref.name)
            if routed is None:
                raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: '{ref.name}'")
            forwarded = params.model_copy(update={"ref": ref.model_copy(update={"name": routed.original_name})})
            return await self._forward(
                ctx, routed.backend, types.CompleteRequest(params=forwarded), types.CompleteResult
            )
        backend = self.catalog.route_template(ref.uri) or self.catalog.route_resource(ref.uri)
        if backend is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown resource template: '{ref.uri}'")
        return await self._forward(ctx, backend, types.CompleteRequest(params=params), types.CompleteResult)

    async def _forward(
        self, ctx: Ctx | None, backend: str, request: types.Request[Any, Any], result_type: type[ResultT]
    ) -> ResultT:
        try:
            return await self._send(ctx, backend, request, result_type)
        except (BackendUnavailable, CircuitOpen) as exc:
            raise MCPError(types.INTERNAL_ERROR, str(exc)) from None

    async def _send(
        self,
        ctx: Ctx | None,
        backend: str,
        request: types.Request[Any, Any],
        result_type: type[ResultT],
        *,
        progress_callback: ProgressFnT | None = None,
    ) -> ResultT:
        """Through the shared session, or this client's own session when it needs one; every way goes
        through the backend's circuit breaker. A retry of a 2026-07-28 call continues its round instead.

        Raises `InputRequired` when a 2026-07-28 client must answer something first.
        """
        round_ = round_of(ctx)
        if isinstance(round_, PendingRound):
            assert ctx is not None
            return await self.relay.round_trips.resume(ctx, round_, result_type, progress_callback)
        if isinstance(round_, BackendRound):
            assert ctx is not None
            retry = with_round(request, round_.state, input_responses(ctx))
            return await self._shared(ctx, round_.backend, retry, result_type, progress_callback)
        connection = self._connection(backend)
        via = await self.relay.route(ctx, connection)
        if via is connection:
            return await self._shared(ctx, backend, request, result_type, progress_callback)
        return await via.request(request, result_type, progress_callback=progress_callback)

    async def _shared(
        self,
        ctx: Ctx | None,
        backend: str,
        request: types.Request[Any, Any],
        result_type: type[ResultT],
        progress_callback: ProgressFnT | None,
    ) -> ResultT:
        """The shared session; a 2026-07-28 backend's own `InputRequiredResult` is passed through."""
        connection = self._connection(backend)
        if connection.protocol_version not in MODERN_PROTOCOL_VERSIONS or request.method not in INPUT_REQUIRED_METHODS:
            return await self.health.request(backend, request, result_type, progress_callback=progress_callback)
        result = await self.health.request(
            backend, request, or_input_required(result_type), progress_callback=progress_callback
        )
        if isinstance(result, types.InputRequiredResult):
            raise passed_through(ctx, backend, result)
        return result

    async def _subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        return await self.relay.subscribe(ctx, self._resource_backend(str(params.uri)), str(params.uri), True)

    async def _unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        return await self.relay.subscribe(ctx, self._resource_backend(str(params.uri)), str(params.uri), False)

    def _resource_backend(self, uri: str) -> BackendConnection:
        backend = self.catalog.route_resource(uri) or self.catalog.route_template(uri)
        if backend is None:
            raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: '{uri}'", {"uri": uri})
        return self._connection(backend)


class _Credential:
    """Stands for one Authorization header (known only by its digest) as a client identity."""

    __slots__ = ("__weakref__",)


class Credentials:
    """One identity object per Authorization header, the most recent `limit` kept alive.

    The header is hashed at once and never stored: only its SHA-256 keys the table."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._by_digest: OrderedDict[bytes, _Credential] = OrderedDict()

    def identity(self, header: str) -> object:
        digest = hashlib.sha256(header.encode("utf-8", "surrogatepass")).digest()
        credential = self._by_digest.pop(digest, None) or _Credential()
        self._by_digest[digest] = credential
        while len(self._by_digest) > self.limit:
            self._by_digest.popitem(last=False)
        return credential


def client_identity(ctx: Ctx, credentials: Credentials | None = None) -> object | None:
    """An object that lives as long as the calling client does, or None when the transport has none.

    A handshake-era session has one `Connection` for all its requests. A 2026-07-28 client gets a fresh
    `Connection` per request: over stdio they share the pipe's outbound channel (one per client process);
    over HTTP each request stands alone, and only the credential it carries (its Authorization header,
    given `credentials`) ties a client's calls together; without one it has no identity here.
    """
    connection = ctx.session._connection
    if not connection.has_standalone_channel:
        # A single HTTP exchange (2026-07-28, or a stateless handshake-era request).
        header = _authorization(ctx.request)
        return credentials.identity(header) if credentials is not None and header else None
    if connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return connection.outbound
    return connection


def _authorization(request: Any) -> str | None:
    headers = getattr(request, "headers", None)
    value = headers.get("authorization") if headers is not None else None
    return value if isinstance(value, str) and value.strip() else None


def catalog_of(backends: BackendManager, config: VmcpConfig) -> Catalog:
    """The catalogue of the backends that are ready now."""
    sources = [
        BackendSource(c.name, c.listing, c.config.description or _server_description(c)) for c in backends.ready()
    ]
    return build_catalog(sources, config.aggregation)


def _server_description(connection: BackendConnection) -> str:
    info = connection.server_info
    if info is None:
        return ""
    return info.description or info.title or ""


def _error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


# Not forwarded: the backend call gets a progress token of its own, and the gateway's session speaks its own
# envelope (a 2025-11-25 session refuses a request carrying a 2026-07-28 client's).
_NOT_FORWARDED_META = frozenset(
    {
        "progressToken",
        "progress_token",
        types.PROTOCOL_VERSION_META_KEY,
        types.CLIENT_INFO_META_KEY,
        types.CLIENT_CAPABILITIES_META_KEY,
        types.LOG_LEVEL_META_KEY,
    }
)


def _forwarded_meta(meta: types.RequestParamsMeta | None) -> types.RequestParamsMeta | None:
    """The client's `_meta` minus its progress token and protocol envelope."""
    if not meta:
        return None
    kept = {key: value for key, value in dict(meta).items() if key not in _NOT_FORWARDED_META}
    return kept or None  # type: ignore[return-value]


def _progress_relay(ctx: Ctx | None, meta: types.RequestParamsMeta | None) -> ProgressFnT | None:
    """Relay a backend's progress to the client under the client's own progress token."""
    raw: dict[str, Any] = dict(meta or {})
    token = raw.get("progress_token", raw.get("progressToken"))
    if ctx is None or not isinstance(token, str | int):
        return None
    session, request_id = ctx.session, ctx.request_id

    async def relay(progress: float, total: float | None, message: str | None) -> None:
        await session.send_progress_notification(
            token, progress, total, message, related_request_id=str(request_id) if request_id is not None else None
        )

    return relay
