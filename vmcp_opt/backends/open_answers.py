"""A backend session's HTTP answers that no call waits for any more, not read further.

A call that times out or is cancelled sends `notifications/cancelled` for its request id; at 2025-11-25 the SDK
posts it and keeps reading the request's own POST, so an answer that never ends (a tool slower than
`timeouts.call`, a backend that drips or hangs) held a connection and a task for good, and after 100 of them
(httpx's pool) every request to the backend waited for a free connection and failed. `CancelWatch` (the
write stream) sees the notification and tells `OpenAnswers`, which stops that POST wherever it is: not sent yet
(the cancellation overtook it) or waiting for the headers (`AnswerClient.send` hands the SDK a JSON-RPC error
for the id nobody waits for), or reading the body (`AbandonableBody`).

A request's answer that is not HTTP (a header past h11's buffer, a garbled status line) failed in the SDK's
POST task, where any error but a body's ends the whole session: every call in flight on it, and the backend
out of service until it reconnected. `AnswerClient.send` fails that request alone instead (`not_http`).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import h11
import httpx2
import mcp_types as types
from mcp.shared.message import SessionMessage

from vmcp_opt.backends.errors import one_line
from vmcp_opt.backends.forwarding import WrappedWriteStream
from vmcp_opt.backends.http_bodies import SSE_TYPE, AnswerAbandoned, StreamAbandoned

# The start of a request POST's body as the SDK writes it (httpx's compact JSON of the model: `id` second, then
# `method`). A POST answering the backend's own request (roots, sampling) starts the same way up to its `result` or
# `error`: its id is the backend's, and taking it for ours overwrote, then removed, the entry of our request of
# the same id in flight, which its call's cancellation then no longer reached.
_REQUEST_ID = re.compile(rb'\{"jsonrpc":"2\.0","id":(-?\d+|"(?:[^"\\]|\\.)*"),"method":')
_ID_SCAN = 256  # bytes of the body's start the id is looked for in
# Ids abandoned before their POST opened, remembered per session: the cancellations a session's requests in
# flight can overtake at once (a call's deadline or cancel, ~milliseconds ahead of its POST), with room to spare.
REMEMBERED_ABANDONED = 64


def request_id(request: httpx2.Request) -> types.RequestId | None:
    """The JSON-RPC id of the request a POST carries, or None (not a POST, a notification or a response, not written
    by the SDK)."""
    if request.method != "POST":
        return None
    try:
        head = request.content[:_ID_SCAN]
    except httpx2.RequestNotRead:
        return None
    match = _REQUEST_ID.match(head)
    if match is None:
        return None
    value = json.loads(match.group(1))
    return value if isinstance(value, int | str) else None


class _Answer:
    """One request's answer while it is awaited or read; `abandon()` stops whichever step is running."""

    def __init__(self) -> None:
        self.abandoned = False
        self._scope: anyio.CancelScope | None = None

    def abandon(self) -> None:
        self.abandoned = True
        if self._scope is not None:
            self._scope.cancel()

    @contextmanager
    def step(self) -> Iterator[anyio.CancelScope]:
        """A scope around one await of the answer (the headers, a chunk), cancelled by `abandon()`."""
        with anyio.CancelScope() as scope:
            if self.abandoned:
                scope.cancel()
            self._scope = scope
            try:
                yield scope
            finally:
                self._scope = None


class OpenAnswers:
    """The answers of one session's requests in flight, by JSON-RPC id (unique within a session).

    An id abandoned before its POST opened (the SDK posts each message from a task of its own, so the
    cancellation can overtake its request) is remembered, the last `REMEMBERED_ABANDONED` of them: its POST,
    when it comes, opens an answer abandoned already. The first open of that id consumes it: the SDK reuses an
    id only once its request ended, and a later request of that id is not abandoned. One that never comes (its
    request had ended) is pushed out by newer ones."""

    def __init__(self) -> None:
        self._answers: dict[types.RequestId, _Answer] = {}
        self._abandoned_early: OrderedDict[types.RequestId, None] = OrderedDict()

    def open(self, request: types.RequestId) -> _Answer:
        answer = self._answers[request] = _Answer()
        if request in self._abandoned_early:
            del self._abandoned_early[request]
            answer.abandoned = True
        return answer

    def close(self, request: types.RequestId, answer: _Answer) -> None:
        if self._answers.get(request) is answer:  # a reused id may belong to a newer request already
            del self._answers[request]

    def abandon(self, request: types.RequestId) -> None:
        answer = self._answers.get(request)
        if answer is not None:
            answer.abandon()
            return
        self._abandoned_early[request] = None
        self._abandoned_early.move_to_end(request)
        if len(self._abandoned_early) > REMEMBERED_ABANDONED:
            self._abandoned_early.popitem(last=False)

    @property
    def remembered(self) -> int:
        """How many ids abandoned before their POST opened are remembered (at most `REMEMBERED_ABANDONED`)."""
        return len(self._abandoned_early)

    def __len__(self) -> int:
        return len(self._answers)


class AbandonableBody(httpx2.AsyncByteStream):
    """`inner`'s chunks until the answer is abandoned; then `AnswerAbandoned` (JSON) or `StreamAbandoned` (SSE)."""

    def __init__(
        self, inner: httpx2.AsyncByteStream, answer: _Answer, backend: str, sse: bool, done: Callable[[], None]
    ) -> None:
        self._inner = inner
        self._answer = answer
        self._backend = backend
        self._sse = sse
        self._done = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._inner)
        while True:
            with self._answer.step() as scope:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
            if scope.cancelled_caught:
                if self._sse:
                    raise StreamAbandoned(f"backend '{self._backend}': the call stopped waiting for this answer")
                raise AnswerAbandoned(self._backend)
            yield chunk

    async def aclose(self) -> None:
        self._done()
        await self._inner.aclose()


class AnswerClient(httpx2.AsyncClient):
    """A backend session's HTTP client whose request POSTs `answers` can stop (see the module's docstring)."""

    def __init__(self, *args: Any, backend: str, answers: OpenAnswers, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend = backend
        self.answers = answers

    async def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        request_key = request_id(request)
        if request_key is None:
            return await super().send(request, **kwargs)
        answer = self.answers.open(request_key)
        if answer.abandoned:  # its cancellation came first: not sent, so it holds no connection
            self.answers.close(request_key, answer)
            return self._abandoned(request, request_key)
        try:
            with answer.step() as scope:
                response = await super().send(request, **kwargs)
        except httpx2.RemoteProtocolError as exc:
            self.answers.close(request_key, answer)
            if not _malformed(exc):
                raise  # the backend closed the connection without answering: it is gone, not garbled
            return self._not_http(request, request_key, exc)
        except BaseException:
            self.answers.close(request_key, answer)
            raise
        if scope.cancelled_caught:  # abandoned before the headers came
            self.answers.close(request_key, answer)
            return self._abandoned(request, request_key)
        sse = response.headers.get("content-type", "").split(";")[0].strip().lower() == SSE_TYPE
        # A body read already (`send(stream=False)`, a body held in memory) is closed: no `aclose` would come.
        if isinstance(response.stream, httpx2.AsyncByteStream) and not response.is_closed:
            response.stream = AbandonableBody(
                response.stream, answer, self.backend, sse, lambda: self.answers.close(request_key, answer)
            )
        else:
            self.answers.close(request_key, answer)
        return response

    def _abandoned(self, request: httpx2.Request, request_key: types.RequestId) -> httpx2.Response:
        """The answer the SDK gets for an abandoned request: an error for an id nobody waits for (dropped)."""
        return _error_answer(request, request_key, types.INTERNAL_ERROR, str(AnswerAbandoned(self.backend)))

    def _not_http(
        self, request: httpx2.Request, request_key: types.RequestId, exc: httpx2.RemoteProtocolError
    ) -> httpx2.Response:
        """The answer the SDK gets for a request whose answer broke HTTP: a parse error, which the circuit breaker
        counts as the backend failing (backends/errors.py, `broken_answer`), as it does a body that is not JSON."""
        reason = one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        message = f"backend '{self.backend}' answered with something that is not HTTP ({reason})"
        return _error_answer(request, request_key, types.PARSE_ERROR, message)


def _malformed(exc: BaseException) -> bool:
    """Whether h11 refused what the backend sent (httpx's error comes from httpcore's, which comes from h11's): a
    connection closed with no answer is httpcore's own error, raised while handling no other."""
    cause: BaseException | None = exc
    for _ in range(8):  # a chain is a few links long; a cycle in a hand-made one must not loop
        if cause is None:
            return False
        if isinstance(cause, h11.RemoteProtocolError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _error_answer(request: httpx2.Request, request_key: types.RequestId, code: int, message: str) -> httpx2.Response:
    body = json.dumps({"jsonrpc": "2.0", "id": request_key, "error": {"code": code, "message": message}}).encode()
    return httpx2.Response(200, headers={"content-type": "application/json"}, content=body, request=request)


class CancelWatch(WrappedWriteStream):
    """A transport write stream that tells `answers` of each request the session abandons (the
    `notifications/cancelled` it writes), after passing the notification on."""

    def __init__(self, inner: Any, answers: OpenAnswers) -> None:
        super().__init__(inner)
        self._answers = answers

    async def send(self, item: SessionMessage) -> None:
        await self._inner.send(item)
        message = item.message if isinstance(item, SessionMessage) else None
        if isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
            request = (message.params or {}).get("requestId")
            if isinstance(request, int | str):
                self._answers.abandon(request)
