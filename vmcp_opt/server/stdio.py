"""The gateway over stdio, so a desktop client can launch it as a subprocess.

The SDK's `stdio_server` turns a line it cannot read into an exception on the read stream, which the
server only logs at debug level: the client waits for an answer that never comes. `AnswerMalformed`
answers such a line the way the HTTP endpoint does (`server/bad_input.py`): -32700 Parse error for text
that is not JSON, -32600 Invalid Request for JSON that is not a JSON-RPC message.
"""

from __future__ import annotations

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from vmcp_opt.gateway import Gateway
from vmcp_opt.server.diagnostics import DiagnosticsServer
from vmcp_opt.server.handlers import build_mcp_server
from vmcp_opt.server.streams import ReadStreamWrapper

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


async def serve_stdio(gateway: Gateway, diagnostics: DiagnosticsServer | None = None) -> None:
    """Serve the client on stdin/stdout; `diagnostics` (telemetry.metrics.listen) beside it, the only way to
    reach this gateway's metrics."""
    async with anyio.create_task_group() as task_group:
        await gateway.start(task_group)
        if diagnostics is not None:
            task_group.start_soon(diagnostics.run_beside, name="diagnostics")
        server = build_mcp_server(gateway, "stdio")
        async with stdio_server() as (read, write):
            await server.run(AnswerMalformed(read, write), write, server.create_initialization_options())
        if diagnostics is not None:
            diagnostics.should_exit = True
        gateway.stop()


def malformed_line_error(exc: Exception) -> types.JSONRPCError:
    """The JSON-RPC error for a line the transport could not read as a message."""
    not_json = isinstance(exc, ValidationError) and any(e["type"] == "json_invalid" for e in exc.errors())
    if not_json or not isinstance(exc, ValidationError):
        error = types.ErrorData(code=PARSE_ERROR, message="Parse error: the line is not JSON")
    else:
        error = types.ErrorData(
            code=INVALID_REQUEST, message="Invalid Request: not a JSON-RPC 2.0 request, notification or response"
        )
    return types.JSONRPCError(jsonrpc="2.0", id=None, error=error)


class AnswerMalformed(ReadStreamWrapper):
    """A read stream that answers the transport's read errors on `write` and passes messages on."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], write: WriteStream[SessionMessage]) -> None:
        super().__init__(inner)
        self._write = write

    async def receive(self) -> SessionMessage | Exception:
        while True:
            item = await self._inner.receive()
            if not isinstance(item, Exception):
                return item
            await self._write.send(SessionMessage(malformed_line_error(item)))
