"""Long list answers (`tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`) shaped for
the wire off the event loop, a slice of items at a time.

The SDK shapes a handler's result on the event loop: a dump, the protocol version's validation and a dump
again, three pydantic calls over the whole list. At 10,000 tools (the optimizer off) that stood the loop
still for 300-500 ms on every `tools/list`, so any client could stall every other request by listing in a
loop (bench/README.md, seventh session). Here a list handler's result longer than `SLICE` is handed to
`shape_lists_off_loop` (a server middleware) instead: the SDK's own `ServerRunner._serialize` runs on a worker
thread, once for the envelope (cache hints, the version's sieve, `resultType`, the `serverInfo` stamp) and
once per slice of `SLICE` items. A pydantic call holds the GIL until it returns, so slices are what let the
event loop in between. The SDK still validates the request and gates it as always: the handler answers the
chain an empty list of the same type, which the middleware replaces with the shaped one.

A long answer is built once for every request that lists the same items (server/list_cache.py): shaped, and its
items encoded in the form the caller's transport writes (`SharedItems`), kept for the catalogue now. A request then
encodes only its envelope, and its body is written a `CHUNK` at a time out of the shared items (`body_parts`,
`PartsResponse`; over stdio `session_form`'s line, server/stdio_pipes.py): N lists at once hold one answer, not N.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
import weakref
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from functools import partial
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.runner import ServerRunner
from mcp.shared.exceptions import MCPError
from mcp_types import JSONRPCResponse
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from vmcp_opt.display import shorten
from vmcp_opt.server.list_cache import Built, ListAnswers, key_bytes, shaped_bytes

# Items per pydantic call: ~5 ms of the GIL each for tool definitions on a slow 2-core host (bench/README.md).
SLICE = 200
# Bytes of a long answer's body per write: the transport holds no more than this of it beyond its high-water mark.
CHUNK = 1024 * 1024

# A list method → the attribute of its items on the result model, and their key on the wire.
LIST_ITEMS = {
    "tools/list": ("tools", "tools"),
    "prompts/list": ("prompts", "prompts"),
    "resources/list": ("resources", "resources"),
    "resources/templates/list": ("resource_templates", "resourceTemplates"),
}

ListResult = TypeVar("ListResult", bound=BaseModel)

# Long lists shaped or encoded at once, on worker threads: each holds the GIL a slice at a time, and the event
# loop gets about 1/(n + 1) of it against n of them (20 `tools/list` at once over 50,000 tools held /healthz for
# 10 s). One at a time keeps the loop's share at a half; the lists wait their turn instead.
SHAPERS = 1
# One limiter per event loop: a limiter's waiters belong to the loop they wait in (tests run several in turn).
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


def _shaping() -> anyio.CapacityLimiter:
    """The serving event loop's limiter of list shapers, made at first use."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(SHAPERS)
    return limiter


# Set by the middleware for one list request; the handler leaves its long result here, with its catalogue.
_held: ContextVar[list[tuple[BaseModel, object]] | None] = ContextVar("vmcp_held_list_result", default=None)

# How an answer's JSON is written: `session_form` or `quick_form`.
Form = Callable[[JSONRPCResponse], bytes]


class SharedItems(list[Any]):
    """A long answer's shaped items, shared by every request answered with them, and their JSON (what goes
    between the brackets, a slice of items per part) per form it was encoded in."""

    def __init__(self, items: Sequence[Any]) -> None:
        super().__init__(items)
        self.bodies: dict[Form, list[bytes]] = {}


def answer_list(result: ListResult, attribute: str, generation: object = None) -> ListResult:
    """What a list handler returns: `result` itself when it is short or no middleware waits for it, else an
    empty list of its type while the middleware shapes `result` off the loop (or finds it shaped already for
    `generation`, the catalogue it was listed from)."""
    held = _held.get()
    if held is None or len(getattr(result, attribute)) <= SLICE:
        return result
    held.append((result, generation))
    return result.model_copy(update={attribute: []})


def refuse_cursor(params: types.PaginatedRequestParams | None) -> None:
    """Every list is answered in one page, with no `nextCursor`: a cursor is never one the gateway issued.
    Such a request is invalid (-32602, as the spec says), not one for the whole list again, which a client
    paging through would take for the next page."""
    if params is None or params.cursor is None:
        return
    raise MCPError(
        types.INVALID_PARAMS,
        f"invalid cursor {shorten(params.cursor)!r}: this server answers every list in one page and issues no "
        "cursors; list again without one",
        {"cursor": shorten(params.cursor, 512)},
    )


def shape_lists_off_loop(server: Server[Any], http: bool = True) -> ServerMiddleware[Any]:
    """A server middleware for `server`: a long list answer is shaped on a worker thread (see the module), once
    for every request listing the same items, and its items encoded then too: as `http` writes them for the
    request's protocol version, else as the stdio writer does (`session_form`, whatever the version)."""
    shaper = _Shaper(server)
    answers = ListAnswers()

    async def middleware(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        items = LIST_ITEMS.get(ctx.method)
        if items is None:
            return await call_next(ctx)
        held: list[tuple[BaseModel, object]] = []
        token = _held.set(held)
        try:
            answered = await call_next(ctx)
        finally:
            _held.reset(token)
        if not held:
            return answered
        (result, generation), (attribute, key) = held[0], items
        version = ctx.protocol_version
        form = quick_form if http and version in MODERN_PROTOCOL_VERSIONS else session_form
        build = partial(shaper.build, ctx.method, version, result, attribute, key, form)
        built = await answers.get(
            ctx.method, version, getattr(result, attribute), generation, partial(_off_loop, build)
        )
        return {**built.answer}  # the envelope is the request's own (the SDK may add to it); the items shared

    return middleware


async def _off_loop(build: Callable[[], Built]) -> Built:
    return await anyio.to_thread.run_sync(build, limiter=_shaping())


async def parts_off_loop(response: JSONRPCResponse, key: str, form: Form) -> list[bytes | memoryview]:
    """`body_parts` on a worker thread, in turn with the shapers: one encoder call over a 50,000-tool list held
    the GIL, and so the event loop, for 100-200 ms. A cancelled caller does not wait for it (a stop)."""
    return await anyio.to_thread.run_sync(body_parts, response, key, form, limiter=_shaping(), abandon_on_cancel=True)


class _Shaper:
    """`ServerRunner._serialize` of one server, away from a connection's runner: the method reads the runner's
    `server` alone (its cache hints and `serverInfo` stamp), which this one has."""

    def __init__(self, server: Server[Any]) -> None:
        runner = object.__new__(ServerRunner)
        runner.server = server
        self._serialize = runner._serialize

    def shape(self, method: str, version: str, result: BaseModel, attribute: str, key: str) -> dict[str, Any]:
        """`result` shaped for `version`, its items a slice per `_serialize` call."""
        items: list[Any] = list(getattr(result, attribute))
        envelope = self._serialize(method, version, result.model_copy(update={attribute: []}))
        shaped = SharedItems([])
        for start in range(0, len(items), SLICE):
            part = result.model_copy(update={attribute: items[start : start + SLICE]})
            shaped.extend(self._serialize(method, version, part)[key])
        envelope[key] = shaped
        return envelope

    def build(self, method: str, version: str, result: BaseModel, attribute: str, key: str, form: Form | None) -> Built:
        """`shape`, and the items encoded in `form` (none: the transport writes them its own way)."""
        envelope = self.shape(method, version, result, attribute, key)
        shaped: SharedItems = envelope[key]
        encoded = None if form is None else encoded_items(shaped, key, form)
        if encoded is not None and form is not None:
            shaped.bodies[form] = encoded
        # The shaped items stay beside their JSON: every path but `body_parts` (an answer gone SSE, the answers'
        # own accounting) reads them. So both are counted, about nine tenths of it the shaped items.
        held = shaped_bytes(shaped) + sum(map(sys.getsizeof, encoded or ())) + sys.getsizeof(envelope)
        return Built(envelope, held + key_bytes(len(shaped)))


def long_list(response: JSONRPCResponse) -> str | None:
    """The key of `response`'s items when it is a list answer with more than `SLICE` of them (no other
    result has these keys at its top level)."""
    result = response.result
    return next(
        (key for _, key in LIST_ITEMS.values() if isinstance(listed := result.get(key), list) and len(listed) > SLICE),
        None,
    )


def measured_as(result: dict[str, Any]) -> object:
    """What a size walk (`backends/results.json_size`) should measure of an answer's `result`: a long list's items
    as their shared JSON in `session_form` (a slice of items per part, measured in a step each) when it has it,
    beside the rest of the result; else `result` itself. Walking 50,000 shaped tools held the event loop ~1 s."""
    for _, key in LIST_ITEMS.values():
        items = result.get(key)
        if isinstance(items, SharedItems) and (encoded := items.bodies.get(session_form)) is not None:
            return [encoded, {name: value for name, value in result.items() if name != key}]
    return result


def session_form(response: JSONRPCResponse) -> bytes:
    """How the SDK's session transport encodes an answer (`_create_json_response`)."""
    return response.model_dump_json(by_alias=True, exclude_unset=True).encode()


def modern_form(response: JSONRPCResponse) -> bytes:
    """How the SDK's 2026-07-28 entry encodes an answer (`_streamable_http_modern._write`)."""
    return json.dumps(
        response.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":")
    ).encode()


def json_body(response: JSONRPCResponse, key: str, form: Form) -> bytes:
    """`form(response)`, for a worker thread: `body_parts` joined."""
    return b"".join(body_parts(response, key, form))


def body_parts(response: JSONRPCResponse, key: str, form: Form) -> list[bytes | memoryview]:
    """`form(response)` in parts, for a worker thread: the envelope around its `key` list, and the list's JSON a
    `CHUNK` at a time: views of the items' shared JSON when they are a built answer's (`SharedItems`), else
    encoded now a slice per call (one encoder call over 10k tools held the GIL for 25-60 ms). The list stands in
    the whole answer as a random marker string, which the items then replace."""
    items = response.result[key]
    encoded = items.bodies.get(form) if isinstance(items, SharedItems) else None
    if encoded is None:
        encoded = encoded_items(items, key, form)
        if encoded is None:
            return [form(response)]  # not the shape this was written for: in one piece, as the SDK would
    marker = f"vmcp-list-{uuid.uuid4().hex}"
    head, tail = form(_with_result(response, {**response.result, key: marker})).split(f'"{marker}"'.encode())
    parts: list[bytes | memoryview] = [head + b"["]
    for number, part in enumerate(encoded):
        if number:
            parts.append(b",")
        view = memoryview(part)
        parts.extend(view[start : start + CHUNK] for start in range(0, len(view), CHUNK))
    parts.append(b"]" + tail)
    return parts


def encoded_items(items: list[Any], key: str, form: Form) -> list[bytes] | None:
    """The JSON `form` writes of `items` as an answer's `key` list, without its brackets, in parts to be joined
    by commas (never joined here: that would hold the list twice), a slice per encoder call: each slice encoded
    as an answer holding only it, its items cut from between the brackets. None when an answer in `form` is not
    of the shape this was written for."""
    marker = f"vmcp-list-{uuid.uuid4().hex}"
    sample = JSONRPCResponse(jsonrpc="2.0", id=0, result={key: marker})
    prefix, suffix = form(sample).split(f'"{marker}"'.encode())
    slices = []
    for start in range(0, len(items), SLICE):
        encoded = form(_with_result(sample, {key: items[start : start + SLICE]}))
        if not (encoded.startswith(prefix + b"[") and encoded.endswith(b"]" + suffix)):
            return None
        slices.append(encoded[len(prefix) + 1 : len(encoded) - len(suffix) - 1])
    return slices


def _with_result(response: JSONRPCResponse, result: dict[str, Any]) -> JSONRPCResponse:
    return response.model_copy(update={"result": result})


class PartsResponse(Response):
    """A response whose body is written part by part (`body_parts`): the server waits for each write to drain
    before the next, so a connection holds about a `CHUNK` of a long answer rather than a copy of all of it."""

    def __init__(
        self,
        parts: list[bytes | memoryview],
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        length = {"content-length": str(sum(len(part) for part in parts))}
        super().__init__(None, status_code, {**(headers or {}), **length}, media_type)
        self.parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        for part in self.parts:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def quick_form(response: JSONRPCResponse) -> bytes:
    """An answer's JSON in one pydantic call: 37 against 163 µs for a find_tool answer of 5.8 KB on a slow
    host (`modern_form` dumps to Python objects, then `json.dumps` walks them again). The same JSON values;
    the text differs only where JSON allows it: non-ASCII characters as UTF-8 rather than `\\u` escapes (as
    the 2025-11-25 transport writes them), `1e-05` as `0.00001`. A string holding a lone surrogate, which
    UTF-8 cannot encode, falls back to `modern_form`'s escapes."""
    try:
        return response.model_dump_json(by_alias=True, exclude_none=True).encode()
    except PydanticSerializationError:
        return modern_form(response)


def install_modern_writer() -> None:
    """The SDK's 2026-07-28 entry writes every answer on the event loop (`_write`, a dump then `json.dumps`).
    Here every answer is encoded in one pydantic call (`quick_form`), a long list's on a worker thread a slice
    per call. Errors go through the SDK's own `_write` (its HTTP status per error code, `id: null`).
    Applied once, to the SDK it was written for."""
    from mcp.server import _streamable_http_modern as modern

    original = modern._write
    if getattr(original, "__module__", "") != modern.__name__:
        return  # applied already, or the SDK changed

    async def write(msg: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if not isinstance(msg, JSONRPCResponse):
            await original(msg, scope, receive, send)
            return
        if key := long_list(msg):
            parts = await parts_off_loop(msg, key, quick_form)
            await PartsResponse(parts, media_type="application/json")(scope, receive, send)
            return
        await Response(quick_form(msg), media_type="application/json")(scope, receive, send)

    modern._write = write
