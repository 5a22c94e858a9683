"""A 2026-07-28 retry relayed to the replica holding its round (`sessions.store: redis`).

A round waits in one replica's memory — a backend call asking its client (sampling, elicitation, roots), a
workflow run asking its user, an approval ticket — and its sealed `request_state` names that replica
(vmcp_opt/routing/round_trips/owners.py). A retry landing on another replica is pushed to the owner's
inbox, a Redis list (`<prefix>relay:<replica>`), as a random request id, the round (the plaintext of its
state) and the client's answers; the owner continues the round and pushes the answer to
`<prefix>relay-reply:<request id>`. Both sides poll with BLPOP in short slices (each under `redis.timeout`),
so the asker notices an owner that stops heartbeating and fails the retry with a clear error instead of
waiting out `timeouts.input`. Every key expires.

`RedisAnswerRelay` does the same for a 2025-11-25 client's answer to a request a replica sent it (sampling,
elicitation, roots) that the load balancer sent to another replica: the request's id names the asking replica's
tag (vmcp_opt/server/lazy_stream.py, `AskIds`), the replica the answer landed on pushes it to that tag's inbox,
`<prefix>answers:<tag>`, and the asker hands it to its copy of the session if that copy asked it (the id names
the copy too: an answer for a copy that has ended since is dropped, not given to a new copy's question). Nothing comes back: the client was
answered 202 already, as for any answer it POSTs. Only a live replica's tag is relayed to (each keeps
`<prefix>asker:<tag>` alive while it serves its inbox), only an answer up to `MAX_RELAYED_ANSWER` bytes, and every
list keeps its last `_KEEP` items: a client cannot fill Redis with answers nobody reads.

`RedisCancelRelay` carries a 2025-11-25 client's `notifications/cancelled` for a request not in flight on the
replica it landed on. Nothing says which replica runs a client's request (recording each would cost every
request a Redis write), so it is published on the channel `<prefix>cancels` and every replica holding a copy
of the session hands it to that copy: a client's request ids are unique in its session, so only the copy
running the request acts on it, the others' dispatchers ignore an id they do not know. The same channel carries
a change a replica made to a session's record (`logging/setLevel`, `resources/(un)subscribe`, as method and
params, with the record's revision after it): every replica holding a copy of the session applies it to that copy,
whose backend sessions were set up from the record as it was when the copy was restored
(vmcp_opt/server/session_restore.py), unless the copy already has a newer change of the same thing.

What crosses Redis names a session by the SHA-256 of its id (`session_key_digest`), as the session store does: a
reader of Redis learns no id it could use. A cancellation crosses as its request id and a reason cut to
`_MAX_REASON` characters (the client's params may be megabytes), rebuilt on the receiving side. Every delivery
runs guarded: one failing (a session's stream closed meanwhile) is logged, the relays go on.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCResponse, jsonrpc_message_adapter
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing.round_trips.owners import HeldRound
from vmcp_opt.routing.round_trips.state import Round, decode_round, encode_round
from vmcp_opt.shared.events import STORE_ERRORS, ReplicaPresence, keep_key
from vmcp_opt.shared.session_store import session_key_digest

logger = logging.getLogger(__name__)

Continue = Callable[[Round, types.InputResponses | None], Awaitable[BaseModel]]
Answer = JSONRPCResponse | JSONRPCError
# Hands a relayed answer to this replica's copy of its session: (the digest of its id, the copy that asked, the
# answer).
Deliver = Callable[[str, str, Answer], Awaitable[None]]


@dataclass(frozen=True)
class SessionChange:
    """What a replica changed in a session's record: the request's method and params (`{"level": …}`, `{"uri": …}`),
    and the record's revision after it (None: relayed by a replica that kept no revisions; applied unordered)."""

    method: str
    params: dict[str, str]
    revision: int | None = None

    @property
    def key(self) -> str:
        """What it changes: the log level, or one resource's subscription (a later change of it supersedes it)."""
        return "level" if self.method == "logging/setLevel" else "uri:" + self.params["uri"]

    def newer_than(self, revision: int) -> bool:
        return self.revision is None or self.revision > revision


# Hands a relayed cancellation, or a change to a session's record, to this replica's copy of its session (the
# digest of its id), if it holds one.
DeliverCancel = Callable[[str, JSONRPCNotification | SessionChange], Coroutine[Any, Any, None]]
# The changes relayed, and the one param each carries.
RELAYED_CHANGES = {"logging/setLevel": "level", "resources/subscribe": "uri", "resources/unsubscribe": "uri"}
_KEY_TTL_MS = 60_000
# Most items a relay list keeps (the oldest go): nobody reading it, it stays this small until it expires.
_KEEP = 256
# Most bytes of a client's answer relayed to another replica (sampling results, elicited content: far less).
MAX_RELAYED_ANSWER = 1024 * 1024
# Longest request id, and reason, of a relayed cancellation.
_MAX_REQUEST_ID = 256
_MAX_REASON = 200
# Seconds an answer for a tag whose key is missing waits for it to be written again (each replica writes its
# key every second: `RedisAnswerRelay.serve`'s interval) before it is dropped.
_TAG_GRACE = 2.5
_TAG_LOOKS = 10
# Answers that may wait for a missing tag at once (`RedisAnswerRelay._alive`).
_TAG_WAITERS = 32
# Seconds between attempts to listen again for relayed cancellations after Redis failed.
_RESUBSCRIBE_AFTER = 1.0


class RedisRoundRelay:
    def __init__(self, client: Redis, prefix: str, presence: ReplicaPresence, deadline: float, slice_: float) -> None:
        self.client = client
        self.prefix = prefix
        self.presence = presence
        self.deadline = deadline  # longest wait for the owner's answer (the call's own timeouts bound it)
        self.slice = slice_
        self._log = ThrottledLog(logger, 60.0)

    async def ask(
        self, round_: HeldRound, responses: types.InputResponses | None
    ) -> types.InputRequiredResult | dict[str, Any]:
        owner = round_.owner
        assert owner is not None
        gone = MCPError(
            types.INVALID_PARAMS,
            f"requestState names a call on replica {owner}, which has stopped; call again without requestState",
        )
        try:
            if not await self.presence.alive(owner):
                raise gone
            rid = secrets.token_hex(16)
            answers = {key: value.model_dump(by_alias=True, mode="json") for key, value in (responses or {}).items()}
            relayed = {"id": rid, "round": encode_round(round_), "responses": answers}
            await _push(self.client, f"{self.prefix}relay:{owner}", json.dumps(relayed))
            reply = await self._wait(f"{self.prefix}relay-reply:{rid}", owner)
        except STORE_ERRORS as exc:
            raise MCPError(types.INTERNAL_ERROR, f"the session store is unreachable ({type(exc).__name__})") from None
        if reply is None:
            raise gone
        return _answer(reply)

    async def _wait(self, key: str, owner: str) -> bytes | None:
        with anyio.move_on_after(self.deadline):
            while True:
                popped = await self.client.blpop([key], timeout=self.slice)
                if popped is not None:
                    return _raw(popped[1])
                if not await self.presence.alive(owner):
                    return None
        raise MCPError(types.INTERNAL_ERROR, f"replica {owner} did not answer within {self.deadline:g}s")

    async def serve(self, continue_call: Continue) -> None:
        """The owner's side, until cancelled: each relayed retry continued in a task of its own."""
        inbox = f"{self.prefix}relay:{self.presence.replica}"
        handle = partial(self._continue, continue_call)
        await read_inbox(self.client, inbox, self.slice, self._log, "relayed retries", handle)

    async def _continue(self, continue_call: Continue, raw: bytes) -> None:
        try:
            request = json.loads(raw)
            rid, round_ = str(request["id"]), str(request["round"])
            responses = types.InputResponseRequestParams.model_validate(
                {"inputResponses": request["responses"]}, by_name=False
            ).input_responses
        except (ValueError, KeyError, TypeError, ValidationError):
            logger.warning("sessions: an unreadable relayed retry was dropped")
            return
        try:
            result = await continue_call(decode_round(round_), responses or None)
            reply: dict[str, Any] = {"result": result.model_dump(by_alias=True, mode="json", exclude_none=True)}
            if isinstance(result, types.InputRequiredResult):
                reply = {"input_required": reply["result"]}
        except MCPError as exc:
            reply = {"error": exc.error.model_dump(mode="json", exclude_none=True)}
        except Exception as exc:  # the asker is told, and this replica keeps serving the others
            logger.warning("sessions: a relayed retry failed: %s", type(exc).__name__)
            error = types.ErrorData(code=types.INTERNAL_ERROR, message=f"the retry failed ({type(exc).__name__})")
            reply = {"error": error.model_dump(mode="json", exclude_none=True)}
        try:
            await _push(self.client, f"{self.prefix}relay-reply:{rid}", json.dumps(reply))
        except STORE_ERRORS as exc:
            self._log.warning("reply", "sessions: a relayed retry's answer was not sent: %s", type(exc).__name__)


class RedisAnswerRelay:
    def __init__(self, client: Redis, prefix: str, slice_: float) -> None:
        self.client = client
        self.prefix = prefix
        self.slice = slice_
        self._log = ThrottledLog(logger, 60.0)
        # Answers waiting for a missing tag's key to come back (`_alive`), at most `_TAG_WAITERS`: a client
        # POSTing answers with made-up tags holds that many requests for `_TAG_GRACE`, no more.
        self._waiting = 0

    async def send(self, tag: str, session_id: str, copy: str, answer: Answer) -> None:
        """`answer` pushed to the inbox of the replica tagged `tag`, for its copy `copy` of the session; lost (logged) when Redis fails, so the asking
        call ends by `timeouts.input` as it would had the client not answered. Dropped (logged) when no live
        replica has that tag, or when it is larger than `MAX_RELAYED_ANSWER`."""
        dumped = answer.model_dump(by_alias=True, mode="json", exclude_unset=True)
        relayed = json.dumps({"session": session_key_digest(session_id), "copy": copy, "answer": dumped})
        if len(relayed) > MAX_RELAYED_ANSWER:
            self._log.warning(
                "large", "sessions: a client's answer of %d bytes for another replica was dropped", len(relayed)
            )
            return
        try:
            if not await self._alive(tag):
                self._log.warning("unknown", "sessions: a client's answer named no live replica; dropped")
                return
            await _push(self.client, f"{self.prefix}answers:{tag}", relayed)
        except STORE_ERRORS as exc:
            self._log.warning(
                "send", "sessions: a client's answer for another replica was lost: %s", type(exc).__name__
            )

    async def serve(self, tag: str, deliver: Deliver, interval: float = 1.0) -> None:
        """The asker's side, until cancelled: each answer relayed to this replica's tag handed to `deliver`, and
        the tag's liveness key kept (every `interval`) so other replicas relay to it."""
        inbox = f"{self.prefix}answers:{tag}"
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(keep_key, self.client, self._alive_key(tag), lambda: "1", interval, self._log, "tag")
            await read_inbox(self.client, inbox, self.slice, self._log, "relayed answers", partial(_deliver, deliver))

    async def _alive(self, tag: str) -> bool:
        """Whether a live replica has `tag`. A missing key is looked for again for `_TAG_GRACE`: Redis restarted
        empty (or flushed) has lost every replica's key until its next beat, and an answer dropped then left the
        asking call waiting out `timeouts.input` although its replica ran on."""
        if await self.client.exists(self._alive_key(tag)):
            return True
        if self._waiting >= _TAG_WAITERS:
            return False
        self._waiting += 1
        try:
            for _ in range(_TAG_LOOKS):
                await anyio.sleep(_TAG_GRACE / _TAG_LOOKS)
                if await self.client.exists(self._alive_key(tag)):
                    return True
            return False
        finally:
            self._waiting -= 1

    def _alive_key(self, tag: str) -> str:
        return f"{self.prefix}asker:{tag}"


class RedisCancelRelay:
    def __init__(self, client: Redis, prefix: str, slice_: float) -> None:
        self.client = client
        self.channel = prefix + "cancels"
        self.slice = slice_
        self._log = ThrottledLog(logger, 60.0)

    async def send(self, origin: str, session_id: str, cancel: JSONRPCNotification) -> None:
        """`cancel` published for the replicas other than `origin` (this process's tag); lost (logged) when Redis
        fails: the call then runs to its end, as it did before cancellations were relayed."""
        params = cancel.params or {}
        request_id, reason = params.get("requestId"), params.get("reason")
        if not _usable_request_id(request_id):
            self._log.warning("cancel-id", "sessions: a cancellation of an unusable request id was not relayed")
            return
        cut: dict[str, Any] = {"requestId": request_id}
        if isinstance(reason, str):
            cut["reason"] = reason[:_MAX_REASON]
        relayed = {"origin": origin, "session": session_key_digest(session_id), "cancel": cut}
        try:
            await self.client.publish(self.channel, json.dumps(relayed))
        except STORE_ERRORS as exc:
            self._log.warning("send", "sessions: a client's cancellation was not relayed: %s", type(exc).__name__)

    async def send_change(self, origin: str, session_id: str, change: SessionChange) -> None:
        """A change `origin` made to a session's record, published for the replicas holding a copy of it; lost
        (logged) when Redis fails: their copies then keep the state they were restored with."""
        change_ = {"method": change.method, "params": change.params, "revision": change.revision}
        relayed = {"origin": origin, "session": session_key_digest(session_id), "change": change_}
        try:
            await self.client.publish(self.channel, json.dumps(relayed))
        except STORE_ERRORS as exc:
            self._log.warning("change", "sessions: a session's change was not relayed: %s", type(exc).__name__)

    async def serve(self, origin: str, deliver: DeliverCancel) -> None:
        """Until cancelled: each cancellation or change another replica relays handed to `deliver`; listens again
        after Redis fails (what was published meanwhile is lost: a call it meant runs to its end, a copy keeps
        its state)."""
        # Each in a task of its own: one session slow to take its own holds no other's. The task group is outside
        # the retry loop: a Redis error raised inside it would leave it wrapped in an exception group.
        async with anyio.create_task_group() as tasks:

            def hand(session_id: str, heard: JSONRPCNotification | SessionChange) -> None:
                tasks.start_soon(_guarded, self._log, "relayed cancellations", deliver, session_id, heard)

            while True:
                try:
                    await self._listen(origin, hand)
                except STORE_ERRORS as exc:
                    self._log.warning("listen", "sessions: relayed cancellations not heard: %s", type(exc).__name__)
                await anyio.sleep(_RESUBSCRIBE_AFTER)

    async def _listen(self, origin: str, hand: Callable[[str, JSONRPCNotification | SessionChange], None]) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            while True:
                message = await pubsub.get_message(timeout=self.slice)
                heard = _cancel(message["data"], origin) if message and message.get("type") == "message" else None
                if heard is not None:
                    hand(*heard)
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()  # type: ignore[no-untyped-call]


def _cancel(data: bytes | str, origin: str) -> tuple[str, JSONRPCNotification | SessionChange] | None:
    """(session id, the cancellation or change) of a message another replica published; None for this one's
    or junk."""
    try:
        relayed = json.loads(data)
        if relayed["origin"] == origin:
            return None
        session_id = str(relayed["session"])
        if "change" in relayed:
            return (session_id, _change(relayed["change"]))
        cancel = _cancellation(relayed["cancel"])
    except (ValueError, KeyError, TypeError, ValidationError):
        logger.warning("sessions: an unreadable relayed cancellation or change was dropped")
        return None
    return session_id, cancel


def _usable_request_id(request_id: Any) -> bool:
    """A request id a relayed cancellation may carry: a string or integer, not too long."""
    return (
        not isinstance(request_id, bool)
        and isinstance(request_id, str | int)
        and len(str(request_id)) <= _MAX_REQUEST_ID
    )


def _cancellation(relayed: Any) -> JSONRPCNotification:
    """The client's `notifications/cancelled` rebuilt from what was relayed of it (ValueError, KeyError)."""
    request_id, reason = relayed["requestId"], relayed.get("reason")
    if not _usable_request_id(request_id):
        raise ValueError("requestId")
    params: dict[str, Any] = {"requestId": request_id}
    if isinstance(reason, str):
        params["reason"] = reason[:_MAX_REASON]
    return JSONRPCNotification(jsonrpc="2.0", method="notifications/cancelled", params=params)


def _change(change: Any) -> SessionChange:
    """A relayed change, its method one of `RELAYED_CHANGES`, its one param a string, its revision an integer or
    missing (KeyError, TypeError)."""
    method = str(change["method"])
    name = RELAYED_CHANGES[method]
    value, revision = change["params"][name], change.get("revision")
    if not isinstance(value, str) or isinstance(revision, bool) or not isinstance(revision, int | None):
        raise TypeError(name)
    return SessionChange(method, {name: value}, revision)


# The id a replica running the previous code relays for one of this code's questions: it read the copy's number
# as part of the dispatcher's id (`<copy>-<n>`), and sent no `copy`.
_COPY_IN_ID = re.compile(r"^([0-9]{1,20})-([0-9]{1,20})$")


async def _deliver(deliver: Deliver, raw: bytes) -> None:
    try:
        relayed = json.loads(raw)
        session_id = str(relayed["session"])
        answer = jsonrpc_message_adapter.validate_python(relayed["answer"], by_name=False)
        copy = relayed.get("copy")
        if copy is None and isinstance(answer, JSONRPCResponse | JSONRPCError) and isinstance(answer.id, str):
            found = _COPY_IN_ID.match(answer.id)  # during a rolling upgrade
            if found is not None:
                copy, answer = found.group(1), answer.model_copy(update={"id": int(found.group(2))})
        copy = str(copy if copy is not None else "")
    except (ValueError, KeyError, TypeError, ValidationError):
        answer = None
    if not isinstance(answer, JSONRPCResponse | JSONRPCError):
        logger.warning("sessions: an unreadable relayed answer was dropped")
        return
    await deliver(session_id, copy, answer)


async def read_inbox(
    client: Redis,
    inbox: str,
    slice_: float,
    log: ThrottledLog,
    what: str,
    handle: Callable[[bytes], Coroutine[Any, Any, None]],
) -> None:
    """Until cancelled: each item pushed to `inbox` (`what` it holds, for the log) handled in a task of its own."""
    failed = 0
    async with anyio.create_task_group() as tasks:
        while True:
            try:
                popped = await client.blpop([inbox], timeout=slice_)
            except STORE_ERRORS as exc:
                # One slow reply (the event loop busy at start-up: BLPOP's answer comes a slice later than its
                # socket's timeout allows) is not worth a warning; Redis failing twice in a row is.
                failed += 1
                if failed > 1:
                    log.warning(what, "sessions: %s not read: %s", what, type(exc).__name__)
                await anyio.sleep(slice_)
                continue
            failed = 0
            if popped is not None:
                tasks.start_soon(_guarded, log, what, handle, _raw(popped[1]))


async def _guarded(log: ThrottledLog, what: str, handle: Callable[..., Awaitable[None]], *args: Any) -> None:
    """`handle(*args)`, its failure logged: one message failing stops no relay (nor the layer running them)."""
    try:
        await handle(*args)
    except Exception:
        log.warning(f"{what} failed", "sessions: handling one of the %s failed:\n%s", what, traceback.format_exc())


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _answer(reply: bytes) -> types.InputRequiredResult | dict[str, Any]:
    data = json.loads(reply)
    if "error" in data:
        raise MCPError.from_error_data(types.ErrorData.model_validate(data["error"]))
    if "input_required" in data:
        return types.InputRequiredResult.model_validate(data["input_required"], by_name=False)
    result: dict[str, Any] = data["result"]
    return result


async def _push(client: Redis, key: str, item: str) -> None:
    """`item` appended to the list `key`, which keeps its last `_KEEP` items and expires `_KEY_TTL_MS` after the
    last push: nobody may read it."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.rpush(key, item)
        pipe.ltrim(key, -_KEEP, -1)
        pipe.pexpire(key, _KEY_TTL_MS)
        await pipe.execute()
