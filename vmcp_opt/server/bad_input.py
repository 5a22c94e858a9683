"""Bad input gets the error the JSON-RPC spec names, at no cost to good input.

The SDK answers a body that parses as JSON but is not a JSON-RPC message (`[1, 2]`, `42`, a
request without `"jsonrpc": "2.0"`) with -32602 Invalid params; the spec's answer is -32600
Invalid Request. This ASGI wrapper rewrites only those 400 answers; every other response passes
through untouched (one integer comparison on the start message).

It also answers a request whose `id` is not a string or an integer (`null`, `true`, an object, an array)
with -32600 itself: the SDK would take it for a notification and answer 202, leaving the client waiting.
That needs the body before the SDK reads it: it is read here (up to `server.max_body_bytes`) and handed on
unchanged, and kept in the scope with what of its message the layers inside need (server/post_body.py: read once,
parsed at most once). The error never repeats the client's input.

A JSON-RPC batch (a body that is an array, 2025-03-26 only) is served by `json_batch.JsonRpcBatch`; when the app
wrapped is the drain (server/http.py), the batch holds one of its slots for its whole life.

A body over that cap is answered 413 with a JSON-RPC error naming the setting and the cap; one whose
`Content-Length` says so is answered before any of it is read, rather than when the body deadline runs out.

A body holding more than `limits.max_request_values` JSON values (a batch counted whole) is answered 413 the same
way, before anything parses it (`values_past`): bytes alone let a 3.5 MB `_meta` of 300,000 keys through, which the
SDK parses and validates on the event loop several times (~0.45 s a ping, ~1 s a tools/call, eight at once held
every other client ~9 s). The count runs at C speed over the bytes (a 4 MB body: a few passes of ~1 ms each, on the
loop: a worker thread would hold the GIL as long), and not at all for a body of fewer bytes than the bound.

An `initialize` whose params the SDK cannot read (no `clientInfo`, a `protocolVersion` that is not a string) is
answered -32602 here, naming each field, under the request's id: the SDK says only "Invalid request parameters",
and over HTTP it keeps the session that request opened, which then answers every request the same way and holds
one of the address's `limits.max_sessions_per_address` until it idles out. No session is opened for it here.

Any other request the SDK refuses as "Invalid request parameters" (it names nothing: a prompt argument that is a
number, `arguments` a list) gets the first failing field named in that answer, found by validating the request
again as the SDK did. Only a short JSON answer is looked at, and only a request up to `_RECHECKED_BYTES` is parsed
again: good input costs a look at a start message's headers.

`json.loads` raises RecursionError, not ValueError, on input nested deeper than its recursion limit (a 2 KB
body of brackets): each parse here treats both alike, and the SDK answers that body -32700.
"""

from __future__ import annotations

import json
from typing import Any

from mcp_types import InitializeRequestParams
from mcp_types import methods as sdk_methods
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmcp_opt.backends.results import value_count
from vmcp_opt.config.limits import DEFAULT_MAX_REQUEST_VALUES
from vmcp_opt.display import shorten
from vmcp_opt.server.json_batch import CallSlots, JsonRpcBatch, is_batch
from vmcp_opt.server.post_body import BODY_KEY, GONE, PostBody, parse_json, reading_body
from vmcp_opt.server.sessions import json_rpc_error

INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
PAYLOAD_TOO_LARGE = 413

# The SDK's answer to params it cannot read, which names no field; answers longer than `_SHORT_ANSWER` bytes are
# never it. A request over `_RECHECKED_BYTES` keeps that answer: naming its field would parse it all again.
_UNNAMED = b'"Invalid request parameters"'
_SHORT_ANSWER = 512
_RECHECKED_BYTES = 64 * 1024
# What a client may name a protocol version by (the SDK's default when an HTTP request carries none).
_VERSION_HEADER = b"mcp-protocol-version"
_DEFAULT_VERSION = "2025-03-26"


class JsonRpcErrorCodes:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int = 4 * 1024 * 1024,
        max_request_values: int = DEFAULT_MAX_REQUEST_VALUES,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_request_values = max_request_values
        # A batch's messages go through `app` one by one: the drain there must count the batch as one call.
        self._slots = app if isinstance(app, CallSlots) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self._relayed(scope, receive, send)
            return
        if _declared_length(scope) > self.max_body_bytes:
            await self.too_large(send)
            return
        async with reading_body(scope, receive, self.max_body_bytes) as (receive, body):
            if body is GONE:
                return  # the client left before its body was in (or was cut off by the body timeout): no one to answer
            if not isinstance(body, PostBody):
                await self.too_large(send)
                return
            values = values_past(body.raw, self.max_request_values)
            if values is not None:  # before anything parses it, a batch's split included
                await self.too_many_values(send, values)
                return
            if is_batch(body.raw):
                await JsonRpcBatch(self, scope, send, self._slots).serve(body.raw, receive)
                return
            bad_id = unusable_id_in(body.envelope())
            if bad_id is not None:
                await json_rpc_error(
                    send, 400, INVALID_REQUEST, f"Invalid Request: id must be a string or an integer, not {bad_id}"
                )
                return
            problem = initialize_problem_in(body.initialize())
            if problem is not None:
                request_id, message = problem
                await json_rpc_error(send, 400, INVALID_PARAMS, message, request_id=request_id)
                return
            await self._relayed(scope, receive, send)

    async def _relayed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request through `app`, its 400 answers rewritten by `_invalid_request`."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def relay(message: Message) -> None:
            if message["type"] == "http.response.start" and (message["status"] == 400 or _may_be_unnamed(message)):
                held.append(message)  # hold the start until the body says which error it is
                return
            if held and message["type"] == "http.response.body":
                if message.get("more_body"):
                    held.append(message)
                    return
                start, *parts = held
                held.clear()
                body = b"".join(p.get("body", b"") for p in parts) + message.get("body", b"")
                body = _naming_field(_invalid_request(body) if start["status"] == 400 else body, scope)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, relay)

    async def too_large(self, send: Send) -> None:
        """413 naming the setting and the cap; uvicorn discards whatever of the body is still to come."""
        await json_rpc_error(
            send,
            PAYLOAD_TOO_LARGE,
            INVALID_REQUEST,
            f"Request body too large: over {self.max_body_bytes:,} bytes (server.max_body_bytes)",
            {"limit": "server.max_body_bytes", "max_bytes": self.max_body_bytes},
        )

    async def too_many_values(self, send: Send, values: int) -> None:
        """413 naming the count, the bound and the setting: the body was never parsed."""
        message, data = too_many_values_error(values, self.max_request_values)
        await json_rpc_error(send, PAYLOAD_TOO_LARGE, INVALID_REQUEST, message, data)


def values_past(body: bytes, most: int) -> int | None:
    """How many JSON values `body` holds, at least, when that is more than `most`; None within it. Never parses
    it: `backends/results.py` `value_count` counts its `{`, `[` and `,` (outside its strings once the naive count
    passes `most`; a body of very many strings by its quotes, which undercounts). A body of `most` bytes or fewer
    cannot hold more and is not looked at."""
    if len(body) <= most:
        return None
    values = value_count(body, most)
    return values if values > most else None


def too_many_values_error(values: int, most: int) -> tuple[str, dict[str, Any]]:
    """The -32600 error's message and data for a message of `values` values, past `most`."""
    message = (
        f"Request holds too many JSON values: at least {values:,}, over {most:,} (limits.max_request_values); "
        "send large data as one string"
    )
    return message, {"limit": "limits.max_request_values", "max_values": most, "values": values}


def _declared_length(scope: Scope) -> int:
    """The request's Content-Length, or 0 when it has none (chunked) or an unreadable one (uvicorn refuses it)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def may_mention(body: bytes, text: bytes) -> bool:
    """Whether `body` may hold `text` once parsed: it does as bytes, or has a `\\u` escape, which can spell
    any of it (`"tools\\u002fcall"` is "tools/call"): a client must not slip past a check by escaping."""
    return text in body or b"\\u" in body


def request_of(body: bytes, method: str) -> dict[str, Any] | None:
    """The JSON-RPC message in `body` when it is a `method` request or notification; None for anything
    else (malformed input is left to the SDK). Parses only bodies that may mention `method`."""
    if not may_mention(body, method.encode()):
        return None
    try:
        message: Any = parse_json(body)
    except (ValueError, RecursionError):
        return None
    return message if isinstance(message, dict) and message.get("method") == method else None


def _invalid_request(body: bytes) -> bytes:
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        return body
    error = data.get("error") if isinstance(data, dict) else None
    if (
        isinstance(error, dict)
        and error.get("code") == INVALID_PARAMS
        and str(error.get("message", "")).startswith("Validation error")
        and data.get("id") is None
    ):
        error["code"] = INVALID_REQUEST
        error["message"] = "Invalid Request: not a JSON-RPC 2.0 request, notification or response"
        return json.dumps(data, separators=(",", ":")).encode()
    return body


def unusable_id(body: bytes) -> str | None:
    """The kind of a request's unusable id (`null`, `a boolean`, `an object`, …), or None (a stdio line)."""
    if not may_mention(body, b'"id"'):
        return None
    try:
        data: Any = parse_json(body)
    except (ValueError, RecursionError):
        return None  # the SDK answers -32700
    return unusable_id_in(data)


def unusable_id_in(data: Any) -> str | None:
    """The kind of the unusable id of the request `data` (parsed, or its envelope), or None."""
    if not isinstance(data, dict) or "method" not in data or "id" not in data:
        return None
    request_id = data["id"]
    if isinstance(request_id, bool):
        return "a boolean"
    if isinstance(request_id, str | int):
        return None
    if request_id is None:
        return "null"
    return {dict: "an object", list: "an array", float: "a fraction"}.get(type(request_id), "that")


# At most this many of a bad `initialize`'s problems are named: the rest are counted.
_PROBLEMS_NAMED = 5


def initialize_problem(body: bytes) -> tuple[str | int, str] | None:
    """An `initialize` request the SDK cannot read: its id, and a -32602 message naming each bad field (never
    the value the client sent). None for any other body, a good `initialize`, or one with an unusable id."""
    return initialize_problem_in(request_of(body, "initialize"))


def initialize_problem_in(message: dict[str, Any] | None) -> tuple[str | int, str] | None:
    """`initialize_problem` of an `initialize` request already parsed (None: no such request)."""
    if message is None or isinstance(message.get("id"), bool) or not isinstance(message.get("id"), str | int):
        return None
    try:
        InitializeRequestParams.model_validate(message.get("params") or {}, by_name=False)
    except ValidationError as exc:
        problems = [_field_problem(error) for error in exc.errors(include_input=False, include_url=False)]
        named = "; ".join(problems[:_PROBLEMS_NAMED])
        more = f" (and {len(problems) - _PROBLEMS_NAMED} more)" if len(problems) > _PROBLEMS_NAMED else ""
        return message["id"], f"Invalid params for initialize: {named}{more}"
    return None


def _field_problem(error: Any) -> str:
    path = "params" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    return f"{path}: {error['msg']}"


def _may_be_unnamed(start: Message) -> bool:
    """Whether a 200 response may be the SDK's "Invalid request parameters" (JSON and short; a 2026-07-28
    request's is a 400, which is always looked at)."""
    if start["status"] != 200:
        return False
    headers = dict(start.get("headers", []))
    length = headers.get(b"content-length", b"")
    return (
        headers.get(b"content-type", b"").startswith(b"application/json")
        and length.isdigit()
        and (int(length) <= _SHORT_ANSWER)
    )


def _naming_field(answer: bytes, scope: Scope) -> bytes:
    """The SDK's "Invalid request parameters" answer with its request's first failing field named."""
    posted = scope.get(BODY_KEY)
    if _UNNAMED not in answer or not isinstance(posted, PostBody) or len(posted.raw) > _RECHECKED_BYTES:
        return answer
    try:
        data: Any = json.loads(answer)
        request: Any = parse_json(posted.raw)
    except (ValueError, RecursionError):
        return answer
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or error.get("code") != INVALID_PARAMS or not isinstance(request, dict):
        return answer
    problem = params_problem(request, _protocol_version(scope))
    if problem is None:
        return answer
    error["message"] = problem
    return json.dumps(data, separators=(",", ":")).encode()


def _protocol_version(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == _VERSION_HEADER:
            return str(value.decode("latin-1"))
    return _DEFAULT_VERSION


def params_problem(request: dict[str, Any], version: str) -> str | None:
    """A -32602 message naming the first field of the request's params the SDK refuses at `version` (never the
    value sent), or None when they pass (the SDK refused something else) or the method or version is not the spec's."""
    method = request.get("method")
    if not isinstance(method, str) or method not in sdk_methods.SPEC_CLIENT_METHODS:
        return None
    try:
        sdk_methods.parse_client_request(method, version, request.get("params"))
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        return f"Invalid params for {method}: {_path(errors[0]['loc'])}: {errors[0]['msg']}" if errors else None
    except (ValueError, KeyError, RuntimeError):
        return None  # an unknown version, a method the version lacks: not a params problem
    return None


def _path(loc: tuple[int | str, ...]) -> str:
    """`params.arguments.city`, `params._meta['io.modelcontextprotocol/logLevel']`; a key the client made up is cut
    short."""
    return "".join(_step(part) for part in loc).lstrip(".")


def _step(part: int | str) -> str:
    if isinstance(part, int):
        return f"[{part}]"
    return f".{shorten(part)}" if part.isidentifier() else f"[{shorten(part)!r}]"
