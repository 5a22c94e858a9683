"""2025-11-25 MCP sessions in Redis (`sessions.store: redis`), so any replica can serve any session.

A session is one hash, `<prefix>session:<SHA-256 of its id>` (the id itself, a key to the session, is never
written): the client's `initialize` params as the SDK validated them, the negotiated protocol version, the
namespace of its SSE events, its log level and one `sub:<uri>` field per resource subscription, and its revision:
a counter each change (a log level, a subscription taken or dropped) increments in the script that makes it, so
the replicas holding copies of the session apply the changes they hear in the order Redis took them, whatever the
order they hear them in (a record written before revisions were kept has none: 0). Every use,
on any replica, pushes its expiry to `limits.session_idle_timeout` ahead, so the key outlives the session's
last use by exactly the idle timeout, wherever that use was.

A client's `initialize` params past `MAX_PARAMS_BYTES` are refused (`refuse_oversized`): one client's sessions must not
fill the Redis every client's sessions share. The subscriptions a record keeps are bounded: `max_subscriptions` URIs, none longer than `MAX_SHARED_URI_BYTES`,
`MAX_SHARED_SUBSCRIPTION_BYTES` of URIs in all. Without the bytes, one client's session held up to 256 URIs
of ~64 KB each (16 MB) in the Redis every client's sessions share, and it could open many. A subscription
past a bound is served by the replica that took it, as the client asked, but not recorded: a replica that
takes the session over does not renew it (one warning a minute says so, not one per request).

On Redis Cluster (`redis.cluster`) the digest in both keys is a hash tag, `session:{<digest>}`, so a session's
record and tombstone share a slot, as the scripts and transactions using both need; a single Redis keeps the
untagged names, so an upgrade finds the sessions written before it.

A deleted session leaves a tombstone, `<prefix>session-ended:<digest>`, for as long: a replica still holding
a copy learns from it that the session ended, while a record that is merely missing (Redis restarted empty)
is written again by the replica that holds it, unless the tombstone is there by then (`save_unless_ended`).

Every call's outcome feeds `StoreOutage`: how long Redis has been failing, so that a replica that cannot look a
session up tells its client to retry (503) during a blip and that the session is gone (404) only past
`sessions.outage_grace_seconds`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, InitializeRequestParams
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisClusterException, RedisError

from vmcp_opt.logs import ThrottledLog
from vmcp_opt.shared.redis_client import NotAsked, RedisLink, skip_unless_usable
from vmcp_opt.shared.redis_cluster import cluster_tag

logger = logging.getLogger(__name__)

_SUBSCRIPTION = "sub:"
# Most JSON bytes of a client's `initialize` params a session's record keeps (capabilities and clientInfo, icons
# included, are a few KB in every client seen).
MAX_PARAMS_BYTES = 256 * 1024
# The longest URI a record keeps (UTF-8 bytes): a path of PATH_MAX, twice a long URL; longer ones stay local.
MAX_SHARED_URI_BYTES = 4096
# The URIs' bytes a record keeps in all: 256 URIs of 256 bytes.
MAX_SHARED_SUBSCRIPTION_BYTES = 64 * 1024

_REVISION = "revision"
# KEYS: the record. ARGV: the `sub:<uri>` field, the most subscriptions and URI bytes a record keeps, the
# expiry in ms. The record's new revision (≥ 1): recorded (or already was); 0: past a bound; -1: no record (expired
# or lost: the replica holding the session writes it whole again at its next use, which a lone field's expiry
# would hide). Counted here, not by the caller, so that two replicas serving one session at once cannot both pass
# a bound.
_SUBSCRIBE = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  local count, held = 0, 0
  for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(name, 1, {len(_SUBSCRIPTION)}) == '{_SUBSCRIPTION}' then
      count = count + 1
      held = held + string.len(name) - {len(_SUBSCRIPTION)}
    end
  end
  if count >= tonumber(ARGV[2]) or held + string.len(ARGV[1]) - {len(_SUBSCRIPTION)} > tonumber(ARGV[3]) then
    return 0
  end
  redis.call('HSET', KEYS[1], ARGV[1], '1')
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('HINCRBY', KEYS[1], '{_REVISION}', 1)
"""

# KEYS: the record. ARGV: a field, its value (none: the field deleted), the expiry in ms. The record's new
# revision; -1 when there is no record (as `_SUBSCRIBE`).
_CHANGE_IF_RECORDED = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if #ARGV == 3 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[#ARGV])
return redis.call('HINCRBY', KEYS[1], '{_REVISION}', 1)
"""

# KEYS: the record, the session's tombstone. ARGV: the expiry in ms, then field, value pairs. 0 (nothing written)
# when the tombstone is there: the session was deleted, perhaps after the replica writing it back found the record
# missing, and a record written next to its tombstone could outlive it (a tombstone is not renewed) and let another
# replica restore a deleted session. One script, so no DELETE can land between the check and the write.
_SAVE_UNLESS_ENDED = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class SessionRecord:
    """What a replica needs to serve a session it has not seen."""

    client_params: InitializeRequestParams
    protocol_version: str
    events: str  # the namespace its SSE events are stored under
    log_level: str | None = None
    subscriptions: tuple[str, ...] = field(default_factory=tuple)
    # A digest of the principal that opened it (server/authentication.py `session_owner`; "" anonymous),
    # None in a record written before owners were kept: then not checked.
    owner: str | None = None
    # The revision the record was read at (0 for one written before revisions were kept): what its changes were
    # counted up to, not part of the session's state (two records saying the same are equal).
    revision: int = field(default=0, compare=False)


# What a failed store call raises (as vmcp_opt/shared/events.py `STORE_ERRORS`).
_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)
# Seconds a client is told to wait (Retry-After) before retrying during an outage: a restart or failover ends
# within seconds, and a client retrying each second finds its session a second after Redis is back at most.
OUTAGE_RETRY_AFTER = 1


class StoreOutage:
    """Whether the session store is failing, and since when (the event loop's only; an injectable clock):

        ok ──── a call failed ─────▶ failing (since: now; later failures keep it)
        failing ── a call succeeded ──▶ ok

    `brief()`: failing for less than `grace` seconds. Then a session this replica cannot look up may well exist
    (Redis restarting, failing over), and its client is told to retry rather than that it is gone: a 404 makes
    an MCP client drop the session's state (subscriptions, log level, work under way) and start again. Past
    the grace a client is better off with a new session held here than waiting on Redis."""

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.clock = clock
        self.since: float | None = None

    def failed(self) -> None:
        if self.since is None:
            self.since = self.clock()

    def succeeded(self) -> None:
        self.since = None

    def brief(self) -> bool:
        return self.since is not None and self.clock() - self.since < self.grace


def session_key_digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class RedisSessions:
    def __init__(
        self,
        client: Redis,
        prefix: str,
        ttl: float,
        max_subscriptions: int = 256,
        max_uri_bytes: int = MAX_SHARED_URI_BYTES,
        max_subscription_bytes: int = MAX_SHARED_SUBSCRIPTION_BYTES,
        outage: StoreOutage | None = None,
        link: RedisLink | None = None,
    ) -> None:
        self.client = client
        self.link = link  # what the process knows of Redis: `touch` does not ask one known unreachable
        self.prefix = prefix + "session:"
        self.ended_prefix = prefix + "session-ended:"
        self.ttl_ms = max(1, int(ttl * 1000))
        self.max_subscriptions = max_subscriptions
        self.max_uri_bytes = max_uri_bytes
        self.max_subscription_bytes = max_subscription_bytes
        self._subscribe = client.register_script(_SUBSCRIBE)
        self._change_if_recorded = client.register_script(_CHANGE_IF_RECORDED)
        self._save_unless_ended = client.register_script(_SAVE_UNLESS_ENDED)
        self._log = ThrottledLog(logger, 60.0)
        self.outage = outage or StoreOutage(0.0)

    @contextlib.contextmanager
    def _watched(self) -> Iterator[None]:
        """The outcome of the calls made inside, told to `outage` (a cancelled call says nothing)."""
        try:
            yield
        except _FAILURES:
            self.outage.failed()
            raise
        self.outage.succeeded()

    async def _execute(self, pipe: Pipeline) -> list[Any]:
        with self._watched():
            return await pipe.execute()

    def _key(self, session_id: str) -> str:
        return self.prefix + cluster_tag(self.client, session_key_digest(session_id))

    def _ended(self, session_id: str) -> str:
        # In the record's slot on a cluster (both tagged with the digest): `_SAVE_UNLESS_ENDED` and `delete` use both.
        return self.ended_prefix + cluster_tag(self.client, session_key_digest(session_id))

    async def save(self, session_id: str, record: SessionRecord) -> None:
        """The record of a session just opened (no tombstone to heed: its id is new)."""
        key = self._key(session_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, items=self._pairs(record))
            pipe.pexpire(key, self.ttl_ms)
            await self._execute(pipe)

    async def save_unless_ended(self, session_id: str, record: SessionRecord) -> bool:
        """Writes again the record of a session Redis lacks ("missing"); False, writing nothing, when the
        session was deleted meanwhile (its tombstone is there): the caller ends its copy instead."""
        keys = [self._key(session_id), self._ended(session_id)]
        with self._watched():
            written = await self._save_unless_ended(keys, [self.ttl_ms, *self._pairs(record)])
        return bool(written)

    def _pairs(self, record: SessionRecord) -> list[str]:
        """The record's hash, flat: field, value, field, value…"""
        params = record.client_params.model_dump(by_alias=True, mode="json", exclude_none=True)
        fields = {
            "params": json.dumps(params),
            "version": record.protocol_version,
            "events": record.events,
            "level": record.log_level or "",
            _REVISION: str(record.revision),
            **({"owner": record.owner} if record.owner is not None else {}),
            **{_SUBSCRIPTION + uri: "1" for uri in self._shared(record.subscriptions)},
        }
        return [part for item in fields.items() for part in item]

    async def load(self, session_id: str) -> SessionRecord | None:
        """The session's record, its expiry pushed ahead; None when there is none (or it is unreadable)."""
        key = self._key(session_id)
        # Not MULTI: a Redis at maxmemory refuses every command queued in a transaction, reads too, so another
        # replica could not take a session over (404, the client's session lost) while the one holding it
        # served it; these three need no atomicity, and a plain pipeline is still one round trip.
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.pexpire(key, self.ttl_ms)
            pipe.exists(self._ended(session_id))
            fields, _, ended = await self._execute(pipe)
        if not fields or ended:
            return None
        return _record(fields)

    async def revision(self, session_id: str) -> int | None:
        """The record's revision (0 for one written before revisions were kept); None when there is none."""
        key = self._key(session_id)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.exists(key)
            pipe.hget(key, _REVISION)
            found, revision = await self._execute(pipe)
        return _revision(revision) if found else None

    async def touch(self, session_id: str) -> Literal["live", "ended", "missing"]:
        """Pushes the expiry ahead: "live"; "ended" when it was deleted; "missing" when its record is not
        there (expired, or Redis lost it) though it was not deleted. Raises `NotAsked` at once while Redis is
        known unreachable (a request on a session held here then pays no timeout)."""
        try:
            skip_unless_usable(self.link)
        except NotAsked:
            self.outage.failed()
            raise
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.pexpire(self._key(session_id), self.ttl_ms)
            pipe.exists(self._ended(session_id))
            found, ended = await self._execute(pipe)
        return "ended" if ended else "live" if found else "missing"

    async def keep_alive(self, busy: Callable[[], list[str]]) -> None:
        """Until cancelled: the sessions `busy` names (those with a request in flight, an open stream: in use)
        have their expiry pushed ahead every third of it."""
        while True:
            await anyio.sleep(max(0.05, self.ttl_ms / 3000))
            session_ids = busy()
            try:
                if session_ids:
                    await self.touch_many(session_ids)
            except _FAILURES as exc:
                self._log.warning("keep-alive", "sessions: expiry not pushed ahead: %s", exc)

    async def touch_many(self, session_ids: list[str]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.pexpire(self._key(session_id), self.ttl_ms)
            await self._execute(pipe)

    async def held_states(self, session_ids: list[str]) -> dict[str, Literal["live", "ended", "missing"]]:
        """`touch`'s answer for each of `session_ids` (sessions a replica holds), in one round trip, without
        pushing their expiry ahead (only a use does)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.exists(self._key(session_id))
                pipe.exists(self._ended(session_id))
            found = await self._execute(pipe)
        pairs = zip(found[0::2], found[1::2], strict=True)
        return {
            session_id: "ended" if ended else "live" if recorded else "missing"
            for session_id, (recorded, ended) in zip(session_ids, pairs, strict=True)
        }

    async def delete(self, session_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(session_id))
            pipe.set(self._ended(session_id), "1", px=self.ttl_ms)
            await self._execute(pipe)

    async def set_level(self, session_id: str, level: str) -> int | None:
        """The level recorded; the record's new revision, None when there is no record."""
        return await self._change(self._key(session_id), "level", level)

    async def _change(self, key: str, field: str, value: str | None) -> int | None:
        """HSET (HDEL when `value` is None) into the record if it is there, its revision incremented and its expiry
        pushed ahead: a record evicted or expired since the request was admitted would otherwise come back as a
        field alone, which other replicas take for a live session they cannot read, and which hides from the
        replica holding it that it must write it whole. The new revision, None when there is no record."""
        with self._watched():
            revision = await self._change_if_recorded(
                [key], [field, *([value] if value is not None else []), self.ttl_ms]
            )
        return int(revision) if int(revision) > 0 else None

    async def subscription(self, session_id: str, uri: str, *, subscribed: bool) -> int | None:
        """Records a subscription (within the record's bounds, else only warns) or forgets one. The record's new
        revision when it now says so (only then do other replicas' copies of the session follow), else None."""
        key = self._key(session_id)
        field = _SUBSCRIPTION + uri
        if _size(uri) > self.max_uri_bytes:
            if subscribed:
                self._not_shared()
            return None  # never recorded: nothing to delete either
        if not subscribed:
            return await self._change(key, field, None)
        with self._watched():
            bounds = [self.max_subscriptions, self.max_subscription_bytes, self.ttl_ms]
            recorded = int(await self._subscribe([key], [field, *bounds]))
        if recorded == 0:
            self._not_shared()
        return recorded if recorded > 0 else None

    def _shared(self, uris: tuple[str, ...]) -> list[str]:
        """Those of `uris` a record keeps, in order, within its bounds."""
        kept: list[str] = []
        held = 0
        for uri in uris:
            size = _size(uri)
            if len(kept) == self.max_subscriptions:
                break
            if size <= self.max_uri_bytes and held + size <= self.max_subscription_bytes:
                kept.append(uri)
                held += size
        if len(kept) < len(uris):
            self._not_shared()
        return kept

    def _not_shared(self) -> None:
        self._log.warning(
            "subscriptions",
            "sessions: a session's resource subscriptions past what its record keeps (%d URIs, %d bytes of URIs, "
            "none longer than %d bytes) are served by the replica holding it only; another replica taking the "
            "session over will not renew them",
            self.max_subscriptions,
            self.max_subscription_bytes,
            self.max_uri_bytes,
        )


def refuse_oversized(params: Any) -> None:
    """An `initialize` whose params are too large to keep in Redis for every replica is refused (the SDK then
    keeps no state of it). Without it one client's sessions, each holding up to `server.max_body_bytes` of
    capabilities, filled a Redis every client's sessions share (evicting their records, or refusing writes)."""
    size = len(json.dumps(params or {}, separators=(",", ":")))
    if size > MAX_PARAMS_BYTES:
        raise MCPError(
            INVALID_PARAMS,
            f"initialize: the params are {size} bytes, more than the {MAX_PARAMS_BYTES} a session may keep "
            "(sessions.store: redis keeps them for every replica); send smaller capabilities and clientInfo",
            {"bytes": size, "most": MAX_PARAMS_BYTES},
        )


def _size(uri: str) -> int:
    """Its bytes as Redis counts them (UTF-8; a lone surrogate, which JSON allows, counted, not raised)."""
    return len(uri.encode(errors="surrogatepass"))


def _revision(value: bytes | str | None) -> int:
    """A stored revision; 0 when there is none (a record written before revisions were kept) or it is junk."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return int(text) if text is not None and text.isascii() and text.isdigit() else 0


def _record(fields: dict[bytes, bytes]) -> SessionRecord | None:
    text = {name.decode(errors="replace"): value.decode(errors="replace") for name, value in fields.items()}
    try:
        params = InitializeRequestParams.model_validate(json.loads(text["params"]), by_name=False)
        return SessionRecord(
            client_params=params,
            protocol_version=text["version"],
            events=text["events"],
            log_level=text.get("level") or None,
            owner=text.get("owner"),
            revision=_revision(text.get(_REVISION)),
            subscriptions=tuple(sorted(name[len(_SUBSCRIPTION) :] for name in text if name.startswith(_SUBSCRIPTION))),
        )
    except (KeyError, ValueError, ValidationError) as exc:
        logger.warning("sessions: a stored session is unreadable (%s); it is treated as unknown", type(exc).__name__)
        return None
