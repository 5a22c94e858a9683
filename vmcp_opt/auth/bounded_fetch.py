"""One request to the authorization server (its metadata, its JWKS, token introspection), bounded in time and size.

httpx's `timeout` bounds each read, not the request: a server dripping a byte a second never timed out, and the
JWKS fetch holds the lock every token waits on, so no token was judged while it dripped. Here a request takes at
most `seconds` in all, and its body is read up to `MAX_ANSWER_BYTES` (a JWKS or an introspection answer is a few
KB; the whole body was read into memory whatever its size). The body is asked for uncompressed; one sent gzip or
deflate anyway is inflated here in steps no larger than the limit leaves (httpx inflates a whole chunk before
it can be counted: a 64 KB chunk, some 64 MB).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2

MAX_ANSWER_BYTES = 1024 * 1024
TIMEOUT_SETTING = "auth.incoming.oauth.timeout"


class AnswerUnread(Exception):
    """The answer did not come whole within the bounds; the message says which bound, never the body."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON; `ValueError` when it is not (bounded in size, so parsed where it is read), or when it
        nests deeper than the parser recurses (`[[[[…` within the size cap raises `RecursionError` otherwise)."""
        try:
            return json.loads(self.body)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


async def fetch(
    client: httpx2.AsyncClient,
    method: str,
    url: str,
    seconds: float,
    *,
    data: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
    limit: int = MAX_ANSWER_BYTES,
) -> Answer:
    """`method url` within `seconds` in all, its body read up to `limit` bytes. `AnswerUnread` past either
    bound; `httpx2.HTTPError` for a failure of the transport (it names the request, which the caller masks)."""
    body = bytearray()
    asked = {"Accept-Encoding": "identity", **(headers or {})}
    try:
        with anyio.fail_after(seconds):
            async with client.stream(method, url, data=data, auth=auth, headers=asked) as response:
                inflater = _inflater(response.headers.get("content-encoding", ""))
                async for chunk in response.aiter_raw():
                    body += _inflated(inflater, chunk, limit + 1 - len(body))
                    if len(body) > limit:
                        raise AnswerUnread(f"an answer larger than {limit // 1024} KiB")
                if inflater is not None:
                    body += inflater.flush()  # all its input consumed: what its buffers hold, a few KB at most
                    if len(body) > limit:
                        raise AnswerUnread(f"an answer larger than {limit // 1024} KiB")
    except TimeoutError:
        raise AnswerUnread(f"no whole answer within {seconds:g}s ({TIMEOUT_SETTING})") from None
    return Answer(response.status_code, bytes(body))


def _inflater(encoding: str) -> Any:
    """A zlib inflater for a gzip or deflate body (32 + MAX_WBITS reads either header), None for an identity one."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)
    raise AnswerUnread(f"an answer in an encoding not asked for ({encoding[:32]!r})")


def _inflated(inflater: Any, chunk: bytes, room: int) -> bytes:
    """`chunk` inflated, at most `room` bytes of it: one past the limit (`room` is at least 1), enough to refuse
    the body, however much more the chunk holds."""
    if inflater is None:
        return chunk
    try:
        data: bytes = inflater.decompress(chunk, room)
    except zlib.error:
        raise AnswerUnread("a compressed answer that does not inflate") from None
    return data
