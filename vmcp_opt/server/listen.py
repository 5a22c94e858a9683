"""`subscriptions/listen` (2026-07-28): list changes, and `resources/updated` for the URIs a stream names.

The SDK's handler acknowledges every URI a client names and delivers what the bus carries for it. Here the
acknowledgement promises only the URIs the gateway follows for the stream (backends/resource_updates.py):
served by a backend that takes subscriptions, readable by the caller under the policy, within
`limits.max_subscriptions_per_caller` (the caller's open streams together) and `limits.max_listened_resources`.
Anything else is left out, so a client reads those resources again itself instead of waiting for updates
that never come (a URI the policy refuses is logged and audited as a refused `resources/subscribe`). When the stream ends, its URIs are released (unsubscribed at the backend once no stream
wants them).

Each open stream also holds one of its caller's `limits.max_streams_per_caller` over HTTP (taken before this handler
runs, by `RequestsInFlight`, server/in_flight.py): past it a listen request is refused with an error naming it.

What one request can make a backend do is bounded twice. A request naming more than
`limits.max_resources_per_listen` distinct URIs is refused, with an error naming the limit, before any backend
is asked. A 2025-11-25 backend takes one `resources/subscribe` per URI, one after another under its lock in
`ResourceUpdates`; a stream asks for its URIs there `SUBSCRIBE_BATCH` at a time, and that lock is first come,
first served, so another stream waiting for the same backend gets its turn after one batch, not after the
whole request (a 2026-07-28 backend takes them all in one listen stream of the gateway's: one batch).

A list change is told to a stream only when the list its caller would get changed (`ListViews`): a change of
what the policy hides from the caller is not hinted at, and a busy hidden backend wakes none of its streams. Its
view of each list it listens to is taken when the stream opens (before the acknowledgement, after which the
client reads its lists) and again at each change, as a digest of every item it would be shown (names and
content). With the optimizer on, `tools/list` shows the meta-tools: a backend's tools change no caller's list.
The same `ListViews` decides for 2025-11-25 sessions (server/handlers.py's `ListChangedNotifier`), whose view is
taken at their first message.

A stream ends, with its result, when the credential it was opened with stops being valid (expired or revoked:
server/authentication.py `CredentialLapse`); its client listens again with a fresh one.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import mcp_types as types
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
    event_matches,
    event_to_notification,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from vmcp_opt.auth import Caller
from vmcp_opt.auth.caller import caller_key
from vmcp_opt.backends.connection import BackendConnection
from vmcp_opt.backends.resource_updates import ResourceUpdates
from vmcp_opt.display import shorten
from vmcp_opt.gateway import ListKind
from vmcp_opt.routing import Router
from vmcp_opt.routing.policy import BatchPolicy, resource_targets
from vmcp_opt.server.admission import Admission
from vmcp_opt.server.authentication import credential_lapse
from vmcp_opt.server.streams import served_until

logger = logging.getLogger(__name__)

Ctx = ServerRequestContext[Any, Any]

# URIs of one stream subscribed to at a 2025-11-25 backend (a request each, about a millisecond apiece for a
# local one) before another stream waiting for that backend gets its turn.
SUBSCRIBE_BATCH = 16
# Streams open at once, and events one stream holds unsent (past it the stream is ended: its client re-listens
# and reads its lists again): the SDK's `ListenHandler` defaults.
MAX_STREAMS = 1024
MAX_BUFFERED_EVENTS = 1024
# (view, list) digests kept for the catalogue now: a view is a principal listening (on a stream or a 2025-11-25
# session), and each has at most three lists. Past it the oldest is dropped: computed again when next asked.
VIEWS_KEPT = 3 * MAX_STREAMS

LIST_OF: dict[type[ServerEvent], ListKind] = {
    ToolsListChanged: "tools",
    PromptsListChanged: "prompts",
    ResourcesListChanged: "resources",
}


class ListenStreams:
    """Serves `subscriptions/listen` as the SDK's `ListenHandler` does (acknowledgement first, every frame stamped
    with the subscription id, a bounded backlog per stream), its resource subscriptions narrowed to what the
    gateway delivers and its list changes to those of the caller's own view."""

    def __init__(
        self,
        bus: SubscriptionBus,
        router: Router,
        admission: Admission,
        updates: ResourceUpdates,
        per_caller: int,
        views: ListViews | None = None,
    ) -> None:
        self._bus = bus
        self._router = router
        self._admission = admission
        self._updates = updates
        self._per_caller = per_caller
        self._views = views or ListViews(router)  # shared with whatever else tells of list changes
        self._streams: set[MemoryObjectSendStream[ServerEvent]] = set()
        # Caller key (`caller_key`: a verified subject, else the client's address) → URIs its open streams
        # follow. Not `Caller.id`: a 2026-07-28 HTTP caller without a verified credential is a new id on
        # every request, so each stream would get the whole bound to itself.
        self._held: Counter[str] = Counter()

    async def __call__(
        self, ctx: Ctx, params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        if ctx.request_id is None:
            raise MCPError(types.INVALID_REQUEST, "subscriptions/listen requires a request id")
        if len(self._streams) >= MAX_STREAMS:
            raise MCPError(types.INTERNAL_ERROR, "Subscription limit reached")
        caller = self._admission.caller(ctx)
        asked = list(dict.fromkeys(params.notifications.resource_subscriptions or ()))
        if not asked:
            return await self._serve(ctx, caller, _honored(params.notifications, []))
        self._refuse_past_cap(len(asked))
        held: dict[str, list[str]] = {}  # filled as it goes: a stream cancelled meanwhile releases what it got
        try:
            order = await self._follow(caller, asked, held)
            followed = {uri for uris in held.values() for uri in uris}
            honored = [uri for uri in order if uri in followed]
            if len(honored) < len(asked):
                logger.info(
                    "listen stream of %s: updates of %d of %d resource(s) promised", caller.id, len(honored), len(asked)
                )
            return await self._serve(ctx, caller, _honored(params.notifications, honored))
        finally:
            for name, uris in held.items():
                backend = self._router.backends.get(name)
                if backend is not None:
                    self._updates.release(backend, uris)
                self._give_back(caller_key(caller), len(uris))

    async def _serve(
        self, ctx: Ctx, caller: Caller, honored: types.SubscriptionFilter
    ) -> types.SubscriptionsListenResult:
        """One stream: acknowledged, then fed until its client goes (the handler is cancelled) or `close`."""
        subscription_id = ctx.request_id
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: subscription_id}
        uris = frozenset(honored.resource_subscriptions or ())
        send, receive = anyio.create_memory_object_stream[ServerEvent](MAX_BUFFERED_EVENTS)

        def deliver(event: ServerEvent) -> None:
            if not event_matches(honored, uris, event):
                return
            try:
                send.send_nowait(event)
            except anyio.ClosedResourceError:
                pass  # `close` ended this stream: its loop is unwinding
            except anyio.WouldBlock:
                logger.warning("listen stream %r backlog full; ending the stream", _shown_id(subscription_id))
                self._streams.discard(send)  # its slot now: its own exit may wait on a client that does not read
                send.close()

        # Subscribed before the views are taken: a change meanwhile is buffered, then judged against them.
        unsubscribe = self._bus.subscribe(deliver)
        self._streams.add(send)
        try:
            view = await self._views.watch(caller, _lists(honored))
            await ctx.session.send_notification(
                types.SubscriptionsAcknowledgedNotification(
                    params=types.SubscriptionsAcknowledgedNotificationParams(notifications=honored, _meta=meta)
                ),
                related_request_id=subscription_id,
            )

            async def feed() -> None:
                async for event in receive:
                    kind = LIST_OF.get(type(event))
                    if kind is None or await self._views.changed(view, kind):
                        await ctx.session.send_notification(
                            event_to_notification(event, meta), related_request_id=subscription_id
                        )

            lapse = credential_lapse(getattr(ctx.request, "scope", None) or {})
            if lapse is None:
                await feed()
            elif await served_until(lapse.wait, feed):
                logger.info(
                    "listen stream %r of %s ended: its credential expired or was revoked",
                    _shown_id(subscription_id),
                    caller.id,
                )
        finally:
            unsubscribe()
            self._streams.discard(send)
            send.close()
            receive.close()
        return types.SubscriptionsListenResult(_meta=meta)

    def close(self) -> None:
        """Ends every open stream gracefully: each sends what it holds, then its result."""
        for stream in list(self._streams):
            stream.close()

    async def _follow(self, caller: Caller, asked: list[str], held: dict[str, list[str]]) -> list[str]:
        """Per backend, the URIs followed for this stream, into `held`; the URIs chosen, as routed, in the order
        asked. The caller's room is taken before the backends are asked, so two streams of one caller opened at
        once cannot pass its bound together."""
        chosen, order = self._choose(caller, asked)
        reserved = sum(len(uris) for uris in chosen.values())
        self._held[caller_key(caller)] += reserved
        try:
            for name, uris in chosen.items():
                backend = self._router.backends.get(name)
                if backend is None:
                    continue
                for batch in _batches(backend, uris):
                    # Each `acquire` is shielded: here a stream closed meanwhile stops asking for more.
                    await anyio.lowlevel.checkpoint()
                    followed = await self._updates.acquire(backend, batch)
                    if followed:
                        held.setdefault(name, []).extend(followed)
        finally:
            self._give_back(caller_key(caller), reserved - sum(len(uris) for uris in held.values()))
        return order

    def _refuse_past_cap(self, count: int) -> None:
        most = self._router.sessions.limits.max_resources_per_listen
        if count > most:
            raise MCPError(
                types.INVALID_PARAMS,
                f"this listen request names {count} resources; at most {most} may be named in one "
                "(limits.max_resources_per_listen): split them over several streams",
                {"limit": "limits.max_resources_per_listen", "most": most, "asked": count},
            )

    def _choose(self, caller: Caller, asked: list[str]) -> tuple[dict[str, list[str]], list[str]]:
        """The URIs some backend serves and the caller may read, by backend, within the caller's room, and all
        of them in the order asked. Each as routed: the normal form judged is the one the backend follows and
        the stream promises (`files://%73ecret` and `files://secret` are one URI, followed once)."""
        room = self._per_caller - self._held[caller_key(caller)]
        chosen: dict[str, list[str]] = {}
        order: dict[str, None] = {}
        for uri in asked:
            if room <= 0:
                break
            routed = resource_targets(self._router.catalog.current, uri)
            if routed is None or routed.uri in order or not self._router.may_follow(caller, uri, routed.targets):
                continue
            chosen.setdefault(routed.backend, []).append(routed.uri)
            order[routed.uri] = None
            room -= 1
        return chosen, list(order)

    def _give_back(self, key: str, count: int) -> None:
        self._held[key] -= count
        if self._held[key] <= 0:
            del self._held[key]


def _shown_id(request_id: str | int | None) -> str | int | None:
    """A stream's id as a log line quotes it: the client chose it, at any length (a 2 MB id was a 2 MB line)."""
    return shorten(request_id) if isinstance(request_id, str) else request_id


def _batches(backend: BackendConnection, uris: list[str]) -> list[list[str]]:
    """`uris` as asked of the backend: in `SUBSCRIBE_BATCH`es where each is a request, whole where one listen
    stream of the gateway's takes them all (asking in parts would reopen that stream once per part)."""
    if backend.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return [uris]
    return [uris[i : i + SUBSCRIBE_BATCH] for i in range(0, len(uris), SUBSCRIBE_BATCH)]


def _honored(asked: types.SubscriptionFilter, uris: list[str]) -> types.SubscriptionFilter:
    """What the acknowledgement promises: the lists asked for (a list's change is told when the caller's view of
    it changes) and, of the URIs, those the gateway follows for this stream."""
    return types.SubscriptionFilter(
        tools_list_changed=True if asked.tools_list_changed else None,
        prompts_list_changed=True if asked.prompts_list_changed else None,
        resources_list_changed=True if asked.resources_list_changed else None,
        resource_subscriptions=uris or None,
    )


def _lists(honored: types.SubscriptionFilter) -> list[ListKind]:
    flags: dict[ListKind, bool | None] = {
        "tools": honored.tools_list_changed,
        "prompts": honored.prompts_list_changed,
        "resources": honored.resources_list_changed,
    }
    return [kind for kind, wanted in flags.items() if wanted]


@dataclass
class View:
    """One stream's (or 2025-11-25 session's) caller, which view of the lists it has, and the digest of each list
    as it was last told."""

    caller: Caller
    key: Hashable | None  # None: the policy hides nothing, every caller's lists are the same
    told: dict[ListKind, bytes] = field(default_factory=dict)


class ListViews:
    """Each distinct view's digest of a list, for the catalogue now: computed on a worker thread once per view
    and catalogue, and shared by every stream and 2025-11-25 session of that view (those of one principal wake
    together at a change: one computes, the others wait for it). The work of a change is one pass over the lists
    per principal listening, none of it on the event loop; the digests are dropped when the catalogue changes."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._catalog: object = None  # the catalogue `_kept` is of
        self._kept: dict[tuple[Hashable, ListKind], bytes] = {}
        self._computing: dict[tuple[Hashable, ListKind], anyio.Event] = {}
        self._prints = ItemPrints()

    async def watch(self, caller: Caller, kinds: Sequence[ListKind]) -> View:
        """The caller's view, its lists `kinds` as they are now: what later changes are compared with."""
        view = View(caller, self._key(caller))
        if view.key is not None:
            for kind in kinds:
                view.told[kind] = await self._digest(view, kind)
        return view

    async def changed(self, view: View, kind: ListKind) -> bool:
        """Whether the view's list `kind` changed since the view was last told of it (then it is told now)."""
        if view.key is None:
            return True  # the gateway tells only of a list that changed before any policy: everyone's
        now = await self._digest(view, kind)
        if now == view.told.get(kind):
            return False
        view.told[kind] = now
        return True

    def follow(self, view: View, caller: Caller) -> None:
        """The view is now `caller`'s (a 2025-11-25 session's credential refreshed, or its holder changed): its
        lists' later changes are judged by what that caller is shown, against what the view was last told."""
        if caller is not view.caller:
            view.caller, view.key = caller, self._key(caller)

    def _key(self, caller: Caller) -> Hashable | None:
        policy = self._router.policy
        if getattr(policy, "allows_everything", False):
            return None
        if isinstance(policy, BatchPolicy):
            return ("principal", policy.principal_key(caller))
        return ("stream", object())  # a policy that may decide on anything of the caller: a view of its own

    async def _digest(self, view: View, kind: ListKind) -> bytes:
        key = (view.key, kind)
        while True:
            self._follow_catalog()
            kept = self._kept.get(key)
            if kept is not None:
                return kept
            computing = self._computing.get(key)
            if computing is None:
                break
            await computing.wait()
        done = self._computing[key] = anyio.Event()
        try:
            catalog, digest = await anyio.to_thread.run_sync(self._compute, view.caller, kind)
        finally:
            del self._computing[key]
            done.set()
        self._follow_catalog()
        if catalog is self._catalog:
            if len(self._kept) >= VIEWS_KEPT:
                self._kept.pop(next(iter(self._kept)))
            self._kept[key] = digest
        return digest

    def _follow_catalog(self) -> None:
        catalog = self._router.catalog.current
        if catalog is not self._catalog:
            self._catalog = catalog
            self._kept.clear()

    def _compute(self, caller: Caller, kind: ListKind) -> tuple[object, bytes]:
        """On a worker thread: the catalogue read and the digest of what the caller is shown of `kind` in it."""
        catalog = self._router.catalog.current
        prints = b"".join(self._prints.of(catalog, item) for item in self._visible(caller, kind))
        return catalog, hashlib.blake2b(prints, digest_size=16).digest()

    def _visible(self, caller: Caller, kind: ListKind) -> Sequence[BaseModel]:
        router = self._router
        if kind == "tools":
            return router.visible_tools(caller)  # with the optimizer on: the meta-tools and pinned tools
        if kind == "prompts":
            return router.visible_prompts(caller)
        return [*router.visible_resources(caller), *router.visible_templates(caller)]


class ItemPrints:
    """Each listed item's digest (its whole JSON: a changed description is a changed list), kept by identity for
    the catalogue now and the one before: an item of a listing that did not change is the same object in the
    next catalogue, and is not serialized again. Holds at most two catalogues' items."""

    def __init__(self) -> None:
        self._catalog: object = None
        self._now: dict[int, tuple[BaseModel, bytes]] = {}
        self._before: dict[int, tuple[BaseModel, bytes]] = {}

    def of(self, catalog: object, item: BaseModel) -> bytes:
        if catalog is not self._catalog:
            self._catalog, self._before, self._now = catalog, self._now, {}
        kept = self._now.get(id(item)) or self._before.get(id(item))
        if kept is None or kept[0] is not item:  # an id is reused once its object is gone
            text = item.model_dump_json(by_alias=True, exclude_none=True).encode()
            kept = (item, hashlib.blake2b(text, digest_size=16).digest())
        self._now[id(item)] = kept
        return kept[1]
