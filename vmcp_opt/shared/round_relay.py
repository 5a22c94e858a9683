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
`<prefix>answers:<tag>`, and the asker hands it to its copy of the session. Nothing comes back: the client was
answered 202 already, as for any answer it POSTs.

`RedisCancelRelay` carries a 2025-11-25 client's `notifications/cancelled` for a request not in flight on the
replica it landed on. Nothing says which replica runs a client's request (recording each would cost every
request a Redis write), so it is published on the channel `<prefix>cancels` and every replica holding a copy
of the session hands it to that copy: a client's request ids are unique in its session, so only the copy
running the request acts on it, the others' dispatchers ignore an id they do not know. The same channel carries
a change a replica made to a session's record (`logging/setLevel`, `resources/(un)subscribe`, as method and
params): every replica holding a copy of the session applies it to that copy, whose backend sessions were set up
from the record as it was when the copy was restored (vmcp_opt/server/session_restore.py).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
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
from vmcp_opt.shared.events import STORE_ERRORS, ReplicaPresence

logger = logging.getLogger(__name__)

Continue = Callable[[Round, types.InputResponses | None], Awaitable[BaseModel]]
Answer = JSONRPCResponse | JSONRPCError
# Hands a relayed answer to this replica's copy of its session: (session id, the answer).
Deliver = Callable[[str, Answer], Awaitable[None]]
# What a replica changed in a session's record: the request's method and params (`{"level": …}`, `{"uri": …}`).
SessionChange = tuple[str, dict[str, str]]
# Hands a relayed cancellation, or a change to a session's record, to this replica's copy of its session, if it
# holds one.
DeliverCancel = Callable[[str, JSONRPCNotification | SessionChange], Coroutine[Any, Any, None]]
# The changes relayed, and the one param each carries.
RELAYED_CHANGES = {"logging/setLevel": "level", "resources/subscribe": "uri", "resources/unsubscribe": "uri"}
_KEY_TTL_MS = 60_000
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

    async def send(self, tag: str, session_id: str, answer: Answer) -> None:
        """`answer` pushed to the inbox of the replica tagged `tag`; lost (logged) when Redis fails, so the asking
        call ends by `timeouts.input` as it would had the client not answered."""
        relayed = {"session": session_id, "answer": answer.model_dump(by_alias=True, mode="json", exclude_unset=True)}
        try:
            await _push(self.client, f"{self.prefix}answers:{tag}", json.dumps(relayed))
        except STORE_ERRORS as exc:
            self._log.warning(
                "send", "sessions: a client's answer for another replica was lost: %s", type(exc).__name__
            )

    async def serve(self, tag: str, deliver: Deliver) -> None:
        """The asker's side, until cancelled: each answer relayed to this replica's tag handed to `deliver`."""
        inbox = f"{self.prefix}answers:{tag}"
        await read_inbox(self.client, inbox, self.slice, self._log, "relayed answers", partial(_deliver, deliver))


class RedisCancelRelay:
    def __init__(self, client: Redis, prefix: str, slice_: float) -> None:
        self.client = client
        self.channel = prefix + "cancels"
        self.slice = slice_
        self._log = ThrottledLog(logger, 60.0)

    async def send(self, origin: str, session_id: str, cancel: JSONRPCNotification) -> None:
        """`cancel` published for the replicas other than `origin` (this process's tag); lost (logged) when Redis
        fails: the call then runs to its end, as it did before cancellations were relayed."""
        relayed = {"origin": origin, "session": session_id, "cancel": cancel.model_dump(by_alias=True, mode="json")}
        try:
            await self.client.publish(self.channel, json.dumps(relayed))
        except STORE_ERRORS as exc:
            self._log.warning("send", "sessions: a client's cancellation was not relayed: %s", type(exc).__name__)

    async def send_change(self, origin: str, session_id: str, change: SessionChange) -> None:
        """A change `origin` made to a session's record, published for the replicas holding a copy of it; lost
        (logged) when Redis fails: their copies then keep the state they were restored with."""
        method, params = change
        relayed = {"origin": origin, "session": session_id, "change": {"method": method, "params": params}}
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
                tasks.start_soon(deliver, session_id, heard)

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
        cancel = JSONRPCNotification.model_validate(relayed["cancel"], by_name=False)
    except (ValueError, KeyError, TypeError, ValidationError):
        logger.warning("sessions: an unreadable relayed cancellation or change was dropped")
        return None
    return (session_id, cancel) if cancel.method == "notifications/cancelled" else None


def _change(change: Any) -> SessionChange:
    """A relayed change, its method one of `RELAYED_CHANGES` and its one param a string (KeyError, TypeError)."""
    method = str(change["method"])
    name = RELAYED_CHANGES[method]
    value = change["params"][name]
    if not isinstance(value, str):
        raise TypeError(name)
    return method, {name: value}


async def _deliver(deliver: Deliver, raw: bytes) -> None:
    try:
        relayed = json.loads(raw)
        session_id = str(relayed["session"])
        answer = jsonrpc_message_adapter.validate_python(relayed["answer"], by_name=False)
    except (ValueError, KeyError, TypeError, ValidationError):
        answer = None
    if not isinstance(answer, JSONRPCResponse | JSONRPCError):
        logger.warning("sessions: an unreadable relayed answer was dropped")
        return
    await deliver(session_id, answer)


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
                tasks.start_soon(handle, _raw(popped[1]))


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
    """`item` appended to the list `key`, which expires `_KEY_TTL_MS` after the last push: nobody may read it."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.rpush(key, item)
        pipe.pexpire(key, _KEY_TTL_MS)
        await pipe.execute()
