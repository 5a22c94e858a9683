"""A 2026-07-28 retry relayed to the replica holding its round (`sessions.store: redis`).

A round waits in one replica's memory — a backend call asking its client (sampling, elicitation, roots), a
workflow run asking its user, an approval ticket — and its sealed `request_state` names that replica
(vmcp_opt/routing/round_trips/owners.py). A retry landing on another replica is pushed to the owner's
inbox, a Redis list (`<prefix>relay:<replica>`), as a random request id, the round (the plaintext of its
state) and the client's answers; the owner continues the round and pushes the answer to
`<prefix>relay-reply:<request id>`. Both sides poll with BLPOP in short slices (each under `redis.timeout`),
so the asker notices an owner that stops heartbeating and fails the retry with a clear error instead of
waiting out `timeouts.input`. Every key expires.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing.round_trips.owners import HeldRound
from vmcp_opt.routing.round_trips.state import Round, decode_round, encode_round
from vmcp_opt.shared.events import STORE_ERRORS, ReplicaPresence

logger = logging.getLogger(__name__)

Continue = Callable[[Round, types.InputResponses | None], Awaitable[BaseModel]]
_KEY_TTL_MS = 60_000


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
            inbox = f"{self.prefix}relay:{owner}"
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.rpush(inbox, json.dumps({"id": rid, "round": encode_round(round_), "responses": answers}))
                pipe.pexpire(inbox, _KEY_TTL_MS)
                await pipe.execute()
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
        failed = 0
        async with anyio.create_task_group() as tasks:
            while True:
                try:
                    popped = await self.client.blpop([inbox], timeout=self.slice)
                except STORE_ERRORS as exc:
                    # One slow reply (the event loop busy at start-up: BLPOP's answer comes a slice later than
                    # its socket's timeout allows) is not worth a warning; Redis failing twice in a row is.
                    failed += 1
                    if failed > 1:
                        self._log.warning("inbox", "sessions: relayed retries not read: %s", type(exc).__name__)
                    await anyio.sleep(self.slice)
                    continue
                failed = 0
                if popped is not None:
                    tasks.start_soon(self._continue, continue_call, _raw(popped[1]))

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
        key = f"{self.prefix}relay-reply:{rid}"
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, json.dumps(reply))
                pipe.pexpire(key, _KEY_TTL_MS)
                await pipe.execute()
        except STORE_ERRORS as exc:
            self._log.warning("reply", "sessions: a relayed retry's answer was not sent: %s", type(exc).__name__)


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
