"""The client's pipes for the stdio transport, read and written on daemon threads, so that a client that neither
closes stdin nor reads stdout cannot hold a stop (server/stdio.py says what is read).

A signal must stop the gateway while the client keeps stdin open, but a blocking `readline` cannot be interrupted.
`ClientLines` reads on a daemon thread and, once `end` is called, tells the SDK the input ended: the server stops as
when the client closes stdin, and the process exits without waiting for the thread still blocked in `readline`.

The SDK writes stdout through `anyio.wrap_file`, in a worker thread: a write into a pipe the client does not read
blocks that thread, and a cancelled task still waits for it, so neither SIGTERM nor a second signal stopped the
gateway (the cancel at the stop's bound waited for good). `ClientOutput` writes on a daemon thread instead: a
cancelled write stops waiting at once, and the process exits without the thread still blocked in `write`.

`client_transport` is the SDK's `stdio_server` over them, its reader the SDK's, its writer not: the SDK encodes each
message on the event loop in one pydantic call, and a 50,000-tool `tools/list` (17 MiB) held the loop, and every
other client request and backend message, for 110-210 ms a list (bench/stdio_list_stall.py). Here a long list's line
is its envelope around the items' JSON, encoded once per catalogue when the answer was built (server/list_answers.py),
assembled on a worker thread and written by views; other messages are encoded as the SDK does. The same bytes, and
one message at a time, in the order they were sent: an answer never overtakes what was sent before it, nor is cut.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

import anyio
import anyio.lowlevel
import mcp_types as types
from mcp.shared._context_streams import ContextReceiveStream, ContextSendStream, create_context_streams
from mcp.shared.message import SessionMessage

from vmcp_opt.server.list_answers import long_list, parts_off_loop, session_form

if sys.platform != "win32":
    import fcntl

_T = TypeVar("_T")


class ClientLines:
    """The client's lines for the SDK's stdio transport (only `async for`, all it uses), each from `read_line`
    ("" at the end of input) on a daemon thread, so that `end` can stop the input while that thread stays blocked
    in it."""

    def __init__(self, read_line: Callable[[], str]) -> None:
        self._read_line = read_line
        self._wanted: queue.SimpleQueue[asyncio.Future[str]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._waiting: asyncio.Future[str] | None = None
        self._ended = False

    async def __aiter__(self) -> AsyncIterator[str]:
        while line := await self.readline():
            yield line

    async def readline(self) -> str:
        """The next line; "" at the end of input, or once `end` was called."""
        if self._ended:
            return ""
        self._waiting = asyncio.get_running_loop().create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, name="stdio-reader", daemon=True)
            self._thread.start()
        self._wanted.put(self._waiting)
        try:
            return await self._waiting
        finally:
            self._waiting = None

    def end(self) -> None:
        """No more input: the pending `readline` returns "" now (what it then reads is dropped)."""
        self._ended = True
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result("")

    def _read(self) -> None:
        while True:
            wanted = self._wanted.get()
            error: Exception | None = None
            try:
                line = self._read_line()
            except Exception as exc:  # fd closed under us: the transport sees an end of input
                line, error = "", exc
            try:
                wanted.get_loop().call_soon_threadsafe(_settle, wanted, line, error)
            except RuntimeError:
                return  # the event loop is closed: nobody is reading any more
            if not line:
                return


class ClientOutput:
    """The client's stdout for the SDK's transport (only `write` and `flush`, all it calls), written on a daemon
    thread. A write returns once its bytes are in the pipe; a write error (`BrokenPipeError`: the client exited)
    is raised from it, as from the SDK's own writer."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending: queue.SimpleQueue[tuple[Sequence[bytes | memoryview], asyncio.Future[None]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self.unsent = 0  # bytes of writes not yet in the pipe: the client's untaken answers (server/held_answers.py)

    async def write_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        """`parts` written one after the other, nothing between them: one message's line in pieces (views of a
        long list's shared JSON, never joined into a copy)."""
        written = asyncio.get_running_loop().create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="stdio-writer", daemon=True)
            self._thread.start()
        size = sum(len(part) for part in parts)
        self.unsent += size
        self._pending.put((parts, written))
        try:
            await written
        finally:
            self.unsent -= size

    def _write(self) -> None:
        while True:
            parts, written = self._pending.get()
            error: OSError | None = None
            try:
                for part in parts:
                    _write_all(self._fd, part)
            except OSError as exc:
                error = exc
            try:
                written.get_loop().call_soon_threadsafe(_settle, written, None, error)
            except RuntimeError:
                return  # the event loop is closed: nobody writes any more


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _settle(future: asyncio.Future[_T], result: _T, error: Exception | None) -> None:
    if future.done():
        return  # `end` answered it, or its waiter was cancelled (a stop: a write's bytes went out anyway)
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@asynccontextmanager
async def client_transport(
    lines: ClientLines, output: ClientOutput
) -> AsyncIterator[tuple[ContextReceiveStream[SessionMessage | Exception], ContextSendStream[SessionMessage]]]:
    """The SDK's `stdio_server(stdin=lines, stdout=output)`, its messages written by `_write_messages`."""
    read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_reader = create_context_streams[SessionMessage](0)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_read_messages, lines, read_writer)
        tasks.start_soon(_write_messages, write_reader, output)
        yield read_stream, write_stream


async def _read_messages(lines: ClientLines, messages: ContextSendStream[SessionMessage | Exception]) -> None:
    """As the SDK's `stdin_reader`: a line that is no message goes on as its exception."""
    try:
        async with messages:
            async for line in lines:
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except Exception as exc:
                    await messages.send(exc)
                    continue
                await messages.send(SessionMessage(message))
    except anyio.ClosedResourceError:
        await anyio.lowlevel.checkpoint()


async def _write_messages(messages: ContextReceiveStream[SessionMessage], output: ClientOutput) -> None:
    """One message's line after another (a write error, such as a client gone, ends the transport as the SDK's)."""
    try:
        async with messages:
            async for item in messages:
                await output.write_parts(await line_of(item.message))
    except anyio.ClosedResourceError:
        await anyio.lowlevel.checkpoint()


async def line_of(message: types.JSONRPCMessage) -> list[bytes | memoryview]:
    """`message`'s line as the SDK's writer encodes it; a long list's on a worker thread, out of its shared JSON."""
    if isinstance(message, types.JSONRPCResponse) and (key := long_list(message)) is not None:
        return [*await parts_off_loop(message, key, session_form), b"\n"]
    text = message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
    return [text.encode("utf-8", errors="replace")]


@contextmanager
def checked_stdout() -> Iterator[ClientOutput]:
    """stdout through `ClientOutput`, written to a copy of fd 1 while fd 1 points at stderr, as the SDK does when
    it writes stdout itself: a handler's or a child's stray output never lands among the answers."""
    private = _copy_above_std(1)
    os.dup2(2, 1)
    try:
        yield ClientOutput(private)
    finally:
        # `private` stays open: the writer thread may still be blocked on it (it is closed with the process).
        os.dup2(private, 1)


def _copy_above_std(fd: int) -> int:
    if sys.platform == "win32":
        return os.dup(fd)
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
