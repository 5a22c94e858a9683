"""The gateway over stdio, so a desktop client can launch it as a subprocess.

The SDK's `stdio_server` turns a line it cannot read into an exception on the read stream, which the
server only logs at debug level: the client waits for an answer that never comes. `AnswerMalformed`
answers such a line the way the HTTP endpoint does (`server/bad_input.py`): -32700 Parse error for text
that is not JSON, -32600 Invalid Request for JSON that is not a JSON-RPC message.

A request whose `id` is not a string or an integer (`null`, `true`) is read by the SDK as a notification,
which gets no answer: the client would wait forever. `checked_stdin` hands the SDK the client's lines with
such a request replaced by a marker line, which the SDK cannot parse and `AnswerMalformed` answers -32600,
as HTTP does. The SDK diverts fd 0 only when it reads stdin itself; `checked_stdin` does the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, BinaryIO, cast

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from vmcp_opt.gateway import Gateway
from vmcp_opt.server.bad_input import unusable_id
from vmcp_opt.server.diagnostics import DiagnosticsServer
from vmcp_opt.server.handlers import build_mcp_server
from vmcp_opt.server.streams import ReadStreamWrapper

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
# Starts the line that stands for a request with an unusable id; not JSON, so the SDK hands it back as an error.
_UNUSABLE_ID = "\0vmcp:unusable-id:"


async def serve_stdio(gateway: Gateway, diagnostics: DiagnosticsServer | None = None) -> None:
    """Serve the client on stdin/stdout; `diagnostics` (telemetry.metrics.listen) beside it, the only way to
    reach this gateway's metrics."""
    async with anyio.create_task_group() as task_group:
        await gateway.start(task_group)
        if diagnostics is not None:
            task_group.start_soon(diagnostics.run_beside, name="diagnostics")
        server = build_mcp_server(gateway, "stdio")
        with checked_stdin() as stdin:
            async with stdio_server(stdin=stdin) as (read, write):
                await server.run(AnswerMalformed(read, write), write, server.create_initialization_options())
        if diagnostics is not None:
            diagnostics.should_exit = True
        gateway.stop()


def malformed_line_error(exc: Exception) -> types.JSONRPCError:
    """The JSON-RPC error for a line the transport could not read as a message."""
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    line = errors[0].get("input") if errors else None
    if isinstance(line, str) and line.startswith(_UNUSABLE_ID):
        kind = line[len(_UNUSABLE_ID) :].strip()
        error = types.ErrorData(
            code=INVALID_REQUEST, message=f"Invalid Request: id must be a string or an integer, not {kind}"
        )
    elif not isinstance(exc, ValidationError) or any(e["type"] == "json_invalid" for e in errors):
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


class CheckedLines:
    """The client's lines as text (undecodable bytes replaced, as the SDK does), a request with an unusable id
    replaced by the `_UNUSABLE_ID` line. Only `readline`: all `anyio.AsyncFile`'s line iteration calls."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def readline(self) -> str:
        line = self._raw.readline()
        kind = unusable_id(line)
        if kind is not None:
            return f"{_UNUSABLE_ID}{kind}\n"  # the client's input is never repeated
        return line.decode("utf-8", errors="replace")


@contextmanager
def checked_stdin() -> Iterator[anyio.AsyncFile[str]]:
    """stdin's lines through `CheckedLines`, read from a copy of fd 0 while fd 0 reads the null device: a
    handler or a child process that reads stdin gets nothing rather than the client's bytes."""
    private = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    try:
        # closefd=False: a worker thread may still block on it after the transport exits (so says the SDK too).
        raw = os.fdopen(private, "rb", closefd=False)
        yield anyio.wrap_file(cast(IO[str], CheckedLines(raw)))
    finally:
        os.dup2(private, 0)
