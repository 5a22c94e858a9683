"""`subscriptions/listen` (2026-07-28): list changes, and `resources/updated` for the URIs a stream names.

The SDK's handler acknowledges every URI a client names and delivers what the bus carries for it. Here the
acknowledgement promises only the URIs the gateway follows for the stream (backends/resource_updates.py):
served by a backend that takes subscriptions, readable by the caller under the policy, within
`limits.max_subscriptions_per_caller` (the caller's open streams together) and `limits.max_listened_resources`.
Anything else is left out, so a client reads those resources again itself instead of waiting for updates
that never come (a URI the policy refuses is logged and audited as a refused `resources/subscribe`). When the stream ends, its URIs are released (unsubscribed at the backend once no stream
wants them).

What one request can make a backend do is bounded twice. A request naming more than
`limits.max_resources_per_listen` distinct URIs is refused, with an error naming the limit, before any backend
is asked. A 2025-11-25 backend takes one `resources/subscribe` per URI, one after another under its lock in
`ResourceUpdates`; a stream asks for its URIs there `SUBSCRIBE_BATCH` at a time, and that lock is first come,
first served, so another stream waiting for the same backend gets its turn after one batch, not after the
whole request (a 2026-07-28 backend takes them all in one listen stream of the gateway's: one batch).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import anyio.lowlevel
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import ListenHandler, SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from vmcp_opt.auth import Caller
from vmcp_opt.auth.caller import caller_key
from vmcp_opt.backends.connection import BackendConnection
from vmcp_opt.backends.resource_updates import ResourceUpdates
from vmcp_opt.routing import Router
from vmcp_opt.routing.policy import resource_targets
from vmcp_opt.server.admission import Admission

logger = logging.getLogger(__name__)

Ctx = ServerRequestContext[Any, Any]

# URIs of one stream subscribed to at a 2025-11-25 backend (a request each, about a millisecond apiece for a
# local one) before another stream waiting for that backend gets its turn.
SUBSCRIBE_BATCH = 16


class ListenStreams(ListenHandler):
    """The SDK's listen handler, its resource subscriptions narrowed to what the gateway delivers."""

    def __init__(
        self, bus: SubscriptionBus, router: Router, admission: Admission, updates: ResourceUpdates, per_caller: int
    ) -> None:
        super().__init__(bus)
        self._router = router
        self._admission = admission
        self._updates = updates
        self._per_caller = per_caller
        # Caller key (`caller_key`: a verified subject, else the client's address) → URIs its open streams
        # follow. Not `Caller.id`: a 2026-07-28 HTTP caller without a verified credential is a new id on
        # every request, so each stream would get the whole bound to itself.
        self._held: Counter[str] = Counter()

    async def __call__(
        self, ctx: Ctx, params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        asked = list(dict.fromkeys(params.notifications.resource_subscriptions or ()))
        if not asked:
            return await super().__call__(ctx, params)
        self._refuse_past_cap(len(asked))
        caller = self._admission.caller(ctx)
        held: dict[str, list[str]] = {}  # filled as it goes: a stream cancelled meanwhile releases what it got
        try:
            await self._follow(caller, asked, held)
            followed = {uri for uris in held.values() for uri in uris}
            honored = [uri for uri in asked if uri in followed]
            if len(honored) < len(asked):
                logger.info(
                    "listen stream of %s: updates of %d of %d resource(s) promised", caller.id, len(honored), len(asked)
                )
            wanted = params.notifications.model_copy(update={"resource_subscriptions": honored or None})
            return await super().__call__(ctx, params.model_copy(update={"notifications": wanted}))
        finally:
            for name, uris in held.items():
                backend = self._router.backends.get(name)
                if backend is not None:
                    self._updates.release(backend, uris)
                self._give_back(caller_key(caller), len(uris))

    async def _follow(self, caller: Caller, asked: list[str], held: dict[str, list[str]]) -> None:
        """Per backend, the URIs followed for this stream, into `held`. The caller's room is taken before the
        backends are asked, so two streams of one caller opened at once cannot pass its bound together."""
        chosen = self._choose(caller, asked)
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

    def _refuse_past_cap(self, count: int) -> None:
        most = self._router.sessions.limits.max_resources_per_listen
        if count > most:
            raise MCPError(
                types.INVALID_PARAMS,
                f"this listen request names {count} resources; at most {most} may be named in one "
                "(limits.max_resources_per_listen): split them over several streams",
                {"limit": "limits.max_resources_per_listen", "most": most, "asked": count},
            )

    def _choose(self, caller: Caller, asked: list[str]) -> dict[str, list[str]]:
        """The URIs some backend serves and the caller may read, by backend, within the caller's room."""
        room = self._per_caller - self._held[caller_key(caller)]
        chosen: dict[str, list[str]] = {}
        for uri in asked:
            if room <= 0:
                break
            routed = resource_targets(self._router.catalog.current, uri)
            if routed is None or not self._router.may_follow(caller, uri, routed[1]):
                continue
            chosen.setdefault(routed[0], []).append(uri)
            room -= 1
        return chosen

    def _give_back(self, key: str, count: int) -> None:
        self._held[key] -= count
        if self._held[key] <= 0:
            del self._held[key]


def _batches(backend: BackendConnection, uris: list[str]) -> list[list[str]]:
    """`uris` as asked of the backend: in `SUBSCRIBE_BATCH`es where each is a request, whole where one listen
    stream of the gateway's takes them all (asking in parts would reopen that stream once per part)."""
    if backend.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return [uris]
    return [uris[i : i + SUBSCRIBE_BATCH] for i in range(0, len(uris), SUBSCRIBE_BATCH)]
