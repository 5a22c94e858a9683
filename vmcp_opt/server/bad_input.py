"""Bad input gets the error the JSON-RPC spec names, at no cost to good input.

The SDK answers a body that parses as JSON but is not a JSON-RPC message (`[1, 2]`, `42`, a
request without `"jsonrpc": "2.0"`) with -32602 Invalid params; the spec's answer is -32600
Invalid Request. This ASGI wrapper rewrites only those 400 answers; every other response passes
through untouched (one integer comparison on the start message).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

INVALID_REQUEST = -32600
INVALID_PARAMS = -32602


class JsonRpcErrorCodes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def relay(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 400:
                held.append(message)  # hold the start until the body says which error it is
                return
            if held and message["type"] == "http.response.body":
                if message.get("more_body"):
                    held.append(message)
                    return
                start, *parts = held
                held.clear()
                body = b"".join(p.get("body", b"") for p in parts) + message.get("body", b"")
                body = _invalid_request(body)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, relay)


def _invalid_request(body: bytes) -> bytes:
    try:
        data: Any = json.loads(body)
    except ValueError:
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
