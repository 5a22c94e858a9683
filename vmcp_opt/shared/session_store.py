"""2025-11-25 MCP sessions in Redis (`sessions.store: redis`), so any replica can serve any session.

A session is one hash, `<prefix>session:<SHA-256 of its id>` (the id itself, a key to the session, is never
written): the client's `initialize` params as the SDK validated them, the negotiated protocol version, the
namespace of its SSE events, its log level and one `sub:<uri>` field per resource subscription. Every use,
on any replica, pushes its expiry to `limits.session_idle_timeout` ahead, so the key outlives the session's
last use by exactly the idle timeout, wherever that use was.

A deleted session leaves a tombstone, `<prefix>session-ended:<digest>`, for as long: a replica still holding
a copy learns from it that the session ended, while a record that is merely missing (Redis restarted empty)
is written again by the replica that holds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Literal

from mcp_types import InitializeRequestParams
from pydantic import ValidationError
from redis.asyncio import Redis

logger = logging.getLogger(__name__)

_SUBSCRIPTION = "sub:"
_FIXED_FIELDS = 4  # params, version, events, level


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


def session_key_digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class RedisSessions:
    def __init__(self, client: Redis, prefix: str, ttl: float, max_subscriptions: int = 256) -> None:
        self.client = client
        self.prefix = prefix + "session:"
        self.ended_prefix = prefix + "session-ended:"
        self.ttl_ms = max(1, int(ttl * 1000))
        self.max_subscriptions = max_subscriptions

    def _key(self, session_id: str) -> str:
        return self.prefix + session_key_digest(session_id)

    def _ended(self, session_id: str) -> str:
        return self.ended_prefix + session_key_digest(session_id)

    async def save(self, session_id: str, record: SessionRecord) -> None:
        key = self._key(session_id)
        params = record.client_params.model_dump(by_alias=True, mode="json", exclude_none=True)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(
                key,
                mapping={
                    "params": json.dumps(params),
                    "version": record.protocol_version,
                    "events": record.events,
                    "level": record.log_level or "",
                    **({"owner": record.owner} if record.owner is not None else {}),
                    **{_SUBSCRIPTION + uri: "1" for uri in record.subscriptions[: self.max_subscriptions]},
                },
            )
            pipe.pexpire(key, self.ttl_ms)
            await pipe.execute()

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
            fields, _, ended = await pipe.execute()
        if not fields or ended:
            return None
        return _record(fields)

    async def touch(self, session_id: str) -> Literal["live", "ended", "missing"]:
        """Pushes the expiry ahead: "live"; "ended" when it was deleted; "missing" when its record is not
        there (expired, or Redis lost it) though it was not deleted."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.pexpire(self._key(session_id), self.ttl_ms)
            pipe.exists(self._ended(session_id))
            found, ended = await pipe.execute()
        return "ended" if ended else "live" if found else "missing"

    async def touch_many(self, session_ids: list[str]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.pexpire(self._key(session_id), self.ttl_ms)
            await pipe.execute()

    async def ended_among(self, session_ids: list[str]) -> list[str]:
        """Those of `session_ids` deleted (on any replica), in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.exists(self._ended(session_id))
            found = await pipe.execute()
        return [session_id for session_id, ended in zip(session_ids, found, strict=True) if ended]

    async def delete(self, session_id: str) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(session_id))
            pipe.set(self._ended(session_id), "1", px=self.ttl_ms)
            await pipe.execute()

    async def set_level(self, session_id: str, level: str) -> None:
        await self._set_field(self._key(session_id), "level", level)

    async def _set_field(self, key: str, field: str, value: str) -> None:
        """HSET with the record's expiry in the same round trip: a record evicted or ended since the request
        was admitted would otherwise come back as a field alone, kept for ever."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, field, value)
            pipe.pexpire(key, self.ttl_ms)
            await pipe.execute()

    async def subscription(self, session_id: str, uri: str, *, subscribed: bool) -> None:
        key = self._key(session_id)
        if not subscribed:
            await self.client.hdel(key, _SUBSCRIPTION + uri)
            return
        if await self.client.hlen(key) >= _FIXED_FIELDS + self.max_subscriptions:
            logger.warning(
                "sessions: a session holds %d subscriptions; more are served by this replica only",
                self.max_subscriptions,
            )
            return
        await self._set_field(key, _SUBSCRIPTION + uri, "1")


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
            subscriptions=tuple(sorted(name[len(_SUBSCRIPTION) :] for name in text if name.startswith(_SUBSCRIPTION))),
        )
    except (KeyError, ValueError, ValidationError) as exc:
        logger.warning("sessions: a stored session is unreadable (%s); it is treated as unknown", type(exc).__name__)
        return None
