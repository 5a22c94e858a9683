"""The MCP server the transports run: each handler admits its request and hands it to the router.

A handler is three lines: admission makes the (`Caller`, `Exchange`), the router does the work, and an
`InputRequired` raised on the way becomes the 2026-07-28 `InputRequiredResult`. Handlers never look up a
backend, a session or a policy themselves.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from collections import OrderedDict
from typing import Any

import anyio
import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ResourceUpdated, ToolsListChanged
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from vmcp_opt import __version__, speedups
from vmcp_opt.auth import Caller, Identification
from vmcp_opt.backends.resource_updates import ResourceUpdates
from vmcp_opt.gateway import ALL_LISTS, Gateway, ListKind
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing import Router
from vmcp_opt.routing.operations import Operation, watched
from vmcp_opt.routing.round_trips import InputRequired, state_boundary
from vmcp_opt.server.admission import Admission, Transport, connection_of, session_caller
from vmcp_opt.server.list_answers import answer_list, install_modern_writer, refuse_cursor, shape_lists_off_loop
from vmcp_opt.server.listen import ListenStreams, ListViews, View
from vmcp_opt.server.session_restore import is_restoring
from vmcp_opt.server.startup import startup_gate

logger = logging.getLogger(__name__)

# Seconds one session's list_changed may wait for room in its outgoing buffers before it is dropped.
LIST_CHANGED_SEND_WAIT = 2.0

Ctx = ServerRequestContext[Any, Any]
_INITIALIZED = "vmcp.initialized"  # the connection's session start was told to the watchers
_LIST_VIEW = "vmcp.list_view"  # under a policy, a 2025-11-25 session's `View` of its lists (server/listen.py)


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


class Handlers:
    """MCP methods → router calls, for one transport's admission."""

    def __init__(self, router: Router, admission: Admission) -> None:
        self.router = router
        self.admission = admission

    async def list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        refuse_cursor(params)
        tools = await self.router.list_tools(self.admission.caller(ctx))
        return answer_list(types.ListToolsResult(tools=tools), "tools", self._catalog())

    async def call_tool(
        self, ctx: Ctx, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        caller, exchange = self.admission.admit(ctx)
        mismatch = self.router.param_header_mismatch(caller, params.name, params.arguments, exchange.headers)
        if mismatch is not None:
            raise mismatch
        try:
            return await self.router.call_tool(caller, params.name, params.arguments, exchange)
        except InputRequired as asked:
            return asked.result

    async def list_prompts(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        refuse_cursor(params)
        prompts = self.router.list_prompts(self.admission.caller(ctx))
        return answer_list(types.ListPromptsResult(prompts=prompts), "prompts", self._catalog())

    async def get_prompt(
        self, ctx: Ctx, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        caller, exchange = self.admission.admit(ctx)
        try:
            return await self.router.get_prompt(caller, params, exchange)
        except InputRequired as asked:
            return asked.result

    async def list_resources(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        refuse_cursor(params)
        resources = self.router.list_resources(self.admission.caller(ctx))
        return answer_list(types.ListResourcesResult(resources=resources), "resources", self._catalog())

    async def list_resource_templates(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        refuse_cursor(params)
        templates = self.router.list_templates(self.admission.caller(ctx))
        listed = types.ListResourceTemplatesResult(resource_templates=templates)
        return answer_list(listed, "resource_templates", self._catalog())

    def _catalog(self) -> object:
        """The catalogue a list was just made of: a long list's answer is kept for it (server/list_cache.py)."""
        return self.router.catalog.current

    async def read_resource(
        self, ctx: Ctx, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        caller, exchange = self.admission.admit(ctx)
        try:
            return await self.router.read_resource(caller, params, exchange)
        except InputRequired as asked:
            return asked.result

    async def complete(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        caller, exchange = self.admission.admit(ctx)
        try:
            return await self.router.complete(caller, params, exchange)
        except MCPError as exc:
            if exc.code != types.METHOD_NOT_FOUND:
                raise
            # The gateway offers completions for every prompt and template; one whose backend offers none
            # has no suggestions, not a "Method not found" for a method the client was told it may use.
            return types.CompleteResult(completion=types.Completion(values=[]))

    async def subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        caller, exchange = self.admission.admit(ctx)
        await self.router.subscribe(caller, str(params.uri), exchange, subscribe=True)
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        caller, exchange = self.admission.admit(ctx)
        await self.router.subscribe(caller, str(params.uri), exchange, subscribe=False)
        return types.EmptyResult()

    async def set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        caller, exchange = self.admission.admit(ctx)
        await self.router.set_log_level(caller, params.level, exchange)
        return types.EmptyResult()

    async def roots_changed(self, ctx: Ctx, params: types.NotificationParams | None) -> None:
        await self.router.roots_changed(self.admission.caller(ctx))


class SessionStarts:
    """The session start of a 2025-11-25 client, for the watchers (the audit's `mcp_initialize`): its
    `initialize`, once answered, whether or not `notifications/initialized` follows (a client that skips it
    holds a session all the same). Once per connection: a repeated `initialize` starts nothing, nor does the
    replayed one of a session restored on this replica (server/session_restore.py: it started on another).

    Middleware, since the SDK answers `initialize` itself, and commits the client's params to the connection
    only once the middleware chain has returned: the caller's client name, version and protocol version are
    read here from the request and its answer, as `SharedSessions.record` reads them."""

    def __init__(self, router: Router, admission: Admission) -> None:
        self._router = router
        self._admission = admission

    async def __call__(self, ctx: Ctx, call_next: CallNext) -> HandlerResult:
        if ctx.method != "initialize" or not self._router.watchers:
            return await call_next(ctx)
        started = time.perf_counter()
        result = await call_next(ctx)
        state = connection_of(ctx).state
        if not state.get(_INITIALIZED) and not is_restoring(ctx.request_id):
            self._router.initialized(self._starting(ctx, result), result, started)
        state[_INITIALIZED] = True
        return result

    def _starting(self, ctx: Ctx, result: HandlerResult) -> Caller:
        params = types.InitializeRequestParams.model_validate(ctx.params or {}, by_name=False)
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        return dataclasses.replace(
            self._admission.caller(ctx),
            protocol_version=version if isinstance(version, str) else params.protocol_version,
            client_name=params.client_info.name,
            client_version=params.client_info.version,
            capabilities=params.capabilities,
        )


class ModernSessionStarts:
    """The session start of a 2026-07-28 client, for the watchers (the audit's `mcp_initialize`).

    A 2026-07-28 client sends no `initialize` and holds no session: each request stands alone. Its start is
    its `server/discover` (what a client sends when it connects without knowing the server's version: the
    SDK `Client`'s default) or, for a client that skips it (its version pinned), its first request the gateway
    has not seen the like of within `IDLE`: the same caller (credential, stdio pipe, or for an anonymous
    one its address), client name and version. Middleware, so `server/discover` stays the SDK's own answer."""

    IDLE = 1800.0  # seconds without a request after which the client's next one starts a session again
    MOST = 10_000  # clients remembered; the least recently seen is forgotten first

    def __init__(self, router: Router, admission: Admission) -> None:
        self._router = router
        self._admission = admission
        self._seen: OrderedDict[tuple[str | None, ...], float] = OrderedDict()

    async def __call__(self, ctx: Ctx, call_next: CallNext) -> HandlerResult:
        if not self._router.watchers or ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return await call_next(ctx)
        caller = self._admission.caller(ctx)
        first = self._first(caller, time.monotonic())
        if ctx.method == "server/discover":
            with watched(self._router.watchers, Operation("server/discover", caller)):
                return await call_next(ctx)
        if first:
            self._router.initialized(caller)
        return await call_next(ctx)

    def _first(self, caller: Caller, now: float) -> bool:
        """Whether nothing of this client was seen within `IDLE`; remembers it as seen now."""
        anonymous = caller.identified_by is Identification.ANONYMOUS
        who = f"address:{caller.address}" if anonymous else caller.id
        key = (who, caller.client_name, caller.client_version)
        last = self._seen.pop(key, None)
        self._seen[key] = now
        if len(self._seen) > self.MOST:
            self._seen.popitem(last=False)
        return last is None or now - last >= self.IDLE


class ListChangedNotifier:
    """Tells every connected client which of tools, prompts and resources changed.

    Under a policy, a 2025-11-25 session is told that a list changed only when the list *it* would get changed
    since it was last told, as a 2026-07-28 listen stream is, by the same `ListViews` (server/listen.py): a change
    of what the policy hides from it is not hinted at, and a changed description of a tool it sees is a change.
    The session's view is taken at its first message (its `initialize`, before it can read a list) and kept in
    its connection's state, so it goes with the session; the lists' digests are computed on a worker thread once
    per principal and catalogue, whatever the number of its sessions. Without a policy every session is told of
    every change, and nothing is kept or computed per session.

    Sessions are told side by side, each send bounded by `LIST_CHANGED_SEND_WAIT`: a send waits while its
    session's outgoing buffers are full (a client that does not read its GET stream), and told one after
    another, one such client held every later session's list_changed, and the catalogue's next change, for as
    long as it did not read. A send given up on is dropped (list_changed is a hint; the next one says the
    same) and that list's digest forgotten, so the next change is told to that session whatever it is. A
    session's own notifications keep their order: its kinds go one after another, and a change's sends end
    (or are given up on) before the next change's start.
    """

    def __init__(self, router: Router, admission: Admission, views: ListViews) -> None:
        self._router = router
        self._admission = admission
        self._views = views  # shared with the listen streams (`ListenStreams`)
        # One Connection per client (a ServerSession lives only as long as one request).
        self._clients: weakref.WeakSet[Connection] = weakref.WeakSet()
        # 2026-07-28 clients hear about changes on `subscriptions/listen` streams fed by this bus.
        self.bus = InMemorySubscriptionBus()
        self._stalled = 0  # list_changed sends given up on
        self._stall_log = ThrottledLog(logger, 60.0)

    def _tells_everyone(self) -> bool:
        return bool(getattr(self._router.policy, "allows_everything", False))

    async def _changed_for(self, client: Connection, kind: ListKind) -> bool:
        if self._tells_everyone():
            return True
        view = client.state.get(_LIST_VIEW)
        if not isinstance(view, View):
            # Its view is still being taken, at its first message: what it lists next is of this catalogue.
            return False
        caller = session_caller(client)
        if caller is not None:
            self._views.follow(view, caller)  # a session's credential may be refreshed, or its holder change
        return await self._views.changed(view, kind)

    async def track(self, ctx: Ctx, call_next: CallNext) -> HandlerResult:
        connection = connection_of(ctx)
        self._clients.add(connection)
        if _LIST_VIEW not in connection.state and self._watches(connection):
            view = await self._views.watch(self._admission.caller(ctx), sorted(ALL_LISTS))
            connection.state.setdefault(_LIST_VIEW, view)
        return await call_next(ctx)

    def _watches(self, connection: Connection) -> bool:
        """Whether this connection is a session told by `_tell` whose lists the policy may filter. Before its
        `initialize` is committed a session's protocol version is the SDK's handshake-era default."""
        legacy = connection.protocol_version not in MODERN_PROTOCOL_VERSIONS
        return legacy and connection.has_standalone_channel and not self._tells_everyone()

    async def notify(self, kinds: frozenset[ListKind]) -> None:
        events: dict[ListKind, ToolsListChanged | PromptsListChanged | ResourcesListChanged] = {
            "tools": ToolsListChanged(),
            "prompts": PromptsListChanged(),
            "resources": ResourcesListChanged(),
        }
        for kind in sorted(kinds):
            await self.bus.publish(events[kind])
        async with anyio.create_task_group() as task_group:
            for client in list(self._clients):
                if client.protocol_version in MODERN_PROTOCOL_VERSIONS or not client.has_standalone_channel:
                    continue  # modern clients are told through the bus above
                task_group.start_soon(self._tell, client, kinds)

    async def _tell(self, client: Connection, kinds: frozenset[ListKind]) -> None:
        """One session's list_changed, in order; a send its client does not take in time is dropped."""
        sends = {
            "tools": client.send_tool_list_changed,
            "prompts": client.send_prompt_list_changed,
            "resources": client.send_resource_list_changed,
        }
        for kind in sorted(kinds):
            try:
                if not await self._changed_for(client, kind):
                    continue
                with anyio.move_on_after(LIST_CHANGED_SEND_WAIT) as waited:
                    await sends[kind]()
            except Exception as exc:  # a client gone away must not stop the others being told
                logger.debug("list_changed not delivered to a client: %r", exc)
                return
            if waited.cancelled_caught:
                view = client.state.get(_LIST_VIEW)
                if isinstance(view, View):
                    view.told.pop(kind, None)  # it was not told: the next change is news to it
                self._stalled += 1
                self._stall_log.warning(
                    "stalled",
                    "list_changed dropped for a client that does not read its stream (%d so far)",
                    self._stalled,
                )
                return


def build_mcp_server(gateway: Gateway, transport: Transport) -> Server[Any]:
    """The low-level MCP server of one transport, its handlers wired to the gateway's router."""
    speedups.install()
    install_modern_writer()
    speedups.freeze_heap()  # imports, config, the gateway: start-up's objects, never garbage
    admission = Admission(transport)
    # What each principal's lists are, for the catalogue now: both eras' list changes are told by it.
    views = ListViews(gateway.router)
    notifier = ListChangedNotifier(gateway.router, admission, views)
    handlers = Handlers(gateway.router, admission)
    gateway.on_lists_changed.append(notifier.notify)
    limits = gateway.config.limits
    updates = ResourceUpdates(
        lambda uri: notifier.bus.publish(ResourceUpdated(uri)), most=limits.max_listened_resources
    )
    updates.watch(gateway.backends.connections.values())
    listener = ListenStreams(
        notifier.bus, gateway.router, admission, updates, limits.max_subscriptions_per_caller, views=views
    )
    server = _GatewayServer(
        "vmcp-opt",
        version=__version__,
        instructions="A virtual MCP server: the tools, prompts and resources of several MCP servers behind one endpoint.",
        on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool,
        on_list_prompts=handlers.list_prompts,
        on_get_prompt=handlers.get_prompt,
        on_list_resources=handlers.list_resources,
        on_list_resource_templates=handlers.list_resource_templates,
        on_read_resource=handlers.read_resource,
        on_completion=handlers.complete,
        on_subscribe_resource=handlers.subscribe,
        on_unsubscribe_resource=handlers.unsubscribe,
        on_subscriptions_listen=listener,
        # The 2026-07-28 `Mcp-Param` header check asks for one tool's schema; without this the SDK lists
        # every tool on every call (1.5 s of CPU per call at 50,000 tools). It knows no caller, so under a policy
        # it answers None and `call_tool` makes the check (Router.param_header_mismatch).
        get_tool_input_schema=gateway.router.input_schema,
    )
    # Registered here rather than as constructor arguments, which warn that both are deprecated in 2026-07-28.
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, handlers.set_level)
    server.add_notification_handler(
        "notifications/roots/list_changed", types.NotificationParams, handlers.roots_changed
    )
    speedups.drop_idle_sdk_tracing(server)
    server.middleware.append(notifier.track)
    # A 2025-11-25 client's session start is told to the watchers at its `initialize`.
    server.middleware.append(SessionStarts(gateway.router, admission))
    # 2026-07-28 clients send no `initialize`: their session start is told to the watchers here.
    server.middleware.append(ModernSessionStarts(gateway.router, admission))
    # During start-up, catalogue requests wait (bounded) for the backends' first listing.
    server.middleware.append(startup_gate(gateway))

    # Seals the request_state of every InputRequiredResult handed out, verifies it on the retry.
    def refused(ctx: ServerRequestContext[Any, Any], target: str | None) -> None:
        gateway.telemetry.round_refused(admission.caller(ctx), ctx.method, target, ctx.request_id)

    told = refused if gateway.telemetry.audit is not None else None  # a wrapper per request only when audited
    server.middleware.append(state_boundary(gateway.config.timeouts.input, gateway.state_keys, told))
    # Long list answers are shaped for the wire on a worker thread, in slices, once for all who list the same.
    server.middleware.append(shape_lists_off_loop(server, http=transport == "http"))
    return server
