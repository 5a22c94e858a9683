"""Which replica answered: `Vmcp-Replica: <server.replica_id>` on every HTTP answer (load-balancer debugging,
and how the tests see round-robin at work)."""

from __future__ import annotations

import os
import socket

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmcp_opt.config import ServerConfig

HEADER = b"vmcp-replica"


def replica_id(server: ServerConfig) -> str:
    return server.replica_id or f"{socket.gethostname()}:{os.getpid()}"


class ReplicaHeader:
    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.value = replica.encode("latin-1", errors="replace")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (HEADER, self.value)]}
            await send(message)

        await self.app(scope, receive, named)
