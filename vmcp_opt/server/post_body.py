"""A POST's body, read once and parsed at most once by the ASGI layers in front of the SDK.

`JsonRpcErrorCodes`, the drain and the rate-limit gate each need a little of a request's JSON-RPC message: its
id, method and tool name. Each used to read the body and parse all of it (a 4 MB array of numbers: ~0.4 s of
event-loop time a parse, three to five a request). The first of them now reads it (`reading_body`) and keeps a
`PostBody` in the ASGI scope under `BODY_KEY`; the layers inside take it from there.

`PostBody.envelope()` is the message's id, method and `params.name`, nothing else (the parsed arguments are not
kept for the call's life). A body up to `HEAD_BYTES` is parsed whole; a longer one first by its head, a partial
parse of its first `HEAD_BYTES`, which names them for a client that writes them before the arguments (the SDK's
clients do). What the head shows is the whole message's unless the client repeats a key past it (JSON's last one
wins): a head can mislead only about its sender's own request, so the checks that answer that sender alone trust
it; the rate-limit gate, before it marks a call paid, makes sure (server/rate_limit_gate.py `_paid_for`: by
counting the key's spellings, or by the whole parse, `whole()`, done once). A call refused with 429 is never parsed
whole. The body is kept only while its request lasts: a scope can outlive it (a session's last request's).

No worker thread: `json.loads` and `pydantic_core.from_json` hold the GIL for the whole parse (measured: a 4 MB
body stalls the event loop as long from a thread as on it), so the hop would add its own cost and save nothing.
The parser is `pydantic_core.from_json`, the SDK's 2025 transport's (1.3-3.7 times faster than `json.loads` on
4 MB bodies); a body it refuses (a lone surrogate escape, nesting deeper than ~200) is tried with `json.loads`, the
SDK's 2026-07-28 path's parser, which raises RecursionError, not ValueError, on deep nesting.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pydantic_core
from starlette.types import Message, Receive, Scope

BODY_KEY = "vmcp.post_body"
# A longer body is first read by a partial parse of this much of its start.
HEAD_BYTES = 16 * 1024
# The only members of a message the layers in front of the SDK read.
_ENVELOPE_KEYS = ("jsonrpc", "id", "method")


def parse_json(raw: bytes | str) -> Any:
    """`raw` parsed; raises ValueError (or RecursionError) when neither the SDK's parsers reads it."""
    try:
        return pydantic_core.from_json(raw)
    except ValueError:
        return json.loads(raw)


class PostBody:
    """One POST's body, and as little of its message as the layers in front of the SDK need."""

    def __init__(self, raw: bytes, message: Any = None, *, parsed: bool = False) -> None:
        self.raw = raw
        self._whole: Any = None
        self._whole_done = False
        self._initialize: dict[str, Any] | None = None  # an `initialize` request, kept for its params check
        self._head: Any = None
        self._head_done = False
        if parsed:  # already parsed (a batch's message)
            self._keep(message)

    def envelope(self) -> Any:
        """The message's envelope (`jsonrpc`, `id`, `method`, `params.name`) as a dict, from its head when that
        shows them; else from the whole parse (None for a body that is not JSON, or anything but an object)."""
        if len(self.raw) > HEAD_BYTES and not self._whole_done:
            if not self._head_done:
                self._head, self._head_done = _head_envelope(self.raw), True
            if self._head is not None:
                return self._head
        return self.whole()

    @property
    def from_head(self) -> bool:
        """Whether `envelope()` came from the head (a client repeating a key past it can make it differ)."""
        return self._head is not None and not self._whole_done

    def whole(self) -> Any:
        """The envelope from the whole message, parsed here once."""
        if not self._whole_done:
            try:
                message = parse_json(self.raw)
            except (ValueError, RecursionError):
                message = None
            self._keep(message)
        return self._whole

    def initialize(self) -> dict[str, Any] | None:
        """The whole message when it is an `initialize` request (its params are checked in front of the SDK)."""
        envelope = self.envelope()
        if not isinstance(envelope, dict) or envelope.get("method") != "initialize":
            return None
        self.whole()
        return self._initialize

    def _keep(self, message: Any) -> None:
        self._whole_done = True
        self._whole = _envelope_of(message) if isinstance(message, dict) else None
        if isinstance(message, dict) and message.get("method") == "initialize":
            self._initialize = message


def _envelope_of(message: dict[str, Any]) -> dict[str, Any]:
    envelope = {key: message[key] for key in _ENVELOPE_KEYS if key in message}
    params = message.get("params")
    if "params" in message:
        envelope["params"] = {"name": params["name"]} if isinstance(params, dict) and "name" in params else {}
    return envelope


def _head_envelope(raw: bytes) -> dict[str, Any] | None:
    """The envelope as the first `HEAD_BYTES` of `raw` show it, or None when they cannot say. A value the head
    cuts may look whole (`"id": 12` of `"id": 1234`), so the last member of an object on the cut is not used."""
    try:
        head: Any = pydantic_core.from_json(raw[:HEAD_BYTES], allow_partial=True)
    except ValueError:
        return None
    if not isinstance(head, dict):
        return None
    whole = list(head)[:-1]  # the members that end before the cut
    if "method" not in whole or head["method"] == "initialize":
        return None  # an `initialize` is parsed whole: its params are checked
    if "id" not in whole and (b'"id"' in raw or b"\\u" in raw):
        return None  # an id may come after the head
    envelope = {key: head[key] for key in _ENVELOPE_KEYS if key in whole}
    params = head.get("params")
    if "params" in whole:
        envelope["params"] = {"name": params["name"]} if isinstance(params, dict) and "name" in params else {}
    elif isinstance(params, dict) and "name" in list(params)[:-1]:
        envelope["params"] = {"name": params["name"]}
    elif head["method"] == "tools/call":
        return None  # the tool's name is past the head: the rate-limit gate needs it
    return envelope


@contextlib.asynccontextmanager
async def reading_body(
    scope: Scope, receive: Receive, max_body_bytes: int
) -> AsyncIterator[tuple[Receive, PostBody | bytes | None]]:
    """The request's body and a `receive` that hands it on unchanged: the `PostBody` a layer in front kept in the
    scope, else read here (at most the cap) and kept there until the request is done (a scope can outlive its
    request: a session's last, server/session_relays.py). None past the cap, `GONE` when the client left."""
    known = scope.get(BODY_KEY)
    if isinstance(known, PostBody):
        yield receive, known
        return
    receive, raw = await read_ahead(receive, max_body_bytes)
    if raw is None or raw is GONE:
        yield receive, raw
        return
    body = scope[BODY_KEY] = PostBody(raw)
    try:
        yield receive, body
    finally:
        scope.pop(BODY_KEY, None)


# `read_ahead`'s answer when the client disconnected before its body was in.
GONE = b"\0gone"


async def read_ahead(receive: Receive, max_body_bytes: int) -> tuple[Receive, bytes | None]:
    """A request's body read (at most the cap), and a `receive` that hands it on unchanged. The body is None
    past the cap (`JsonRpcErrorCodes` answers 413), `GONE` when the client disconnected first."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body") or size > max_body_bytes:
            break
    if messages[-1]["type"] == "http.disconnect":
        return receive, GONE
    # Past the cap whether or not more was to come: a chunked body can arrive whole in one message.
    complete = messages[-1]["type"] == "http.request" and not messages[-1].get("more_body")
    body = b"".join(m.get("body", b"") for m in messages) if complete and size <= max_body_bytes else None

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay, body
