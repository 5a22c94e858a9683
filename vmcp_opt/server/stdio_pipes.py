"""The client's pipes for the stdio transport, read and written on daemon threads, so that a client that neither
closes stdin nor reads stdout cannot hold a stop (server/stdio.py says what is read).

A signal must stop the gateway while the client keeps stdin open, but a blocking `readline` cannot be interrupted.
`ClientLines` reads on a daemon thread and, once `end` is called, tells the SDK the input ended: the server stops as
when the client closes stdin, and the process exits without waiting for the thread still blocked in `readline`.

The SDK writes stdout through `anyio.wrap_file`, in a worker thread: a write into a pipe the client does not read
blocks that thread, and a cancelled task still waits for it, so neither SIGTERM nor a second signal stopped the
gateway (the cancel at the stop's bound waited for good). `ClientOutput` writes on a daemon thread instead: a
cancelled write stops waiting at once, and the process exits without the thread still blocked in `write`.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

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
        self._pending: queue.SimpleQueue[tuple[bytes, asyncio.Future[None]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.unsent = 0  # bytes of writes not yet in the pipe: the client's untaken answers (server/held_answers.py)

    async def write(self, text: str) -> None:
        written = asyncio.get_running_loop().create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="stdio-writer", daemon=True)
            self._thread.start()
        data = text.encode("utf-8", errors="replace")
        self.unsent += len(data)
        self._pending.put((data, written))
        try:
            await written
        finally:
            self.unsent -= len(data)

    async def flush(self) -> None:
        """Nothing to do: nothing is buffered here (`write` waits for the pipe)."""

    def _write(self) -> None:
        while True:
            data, written = self._pending.get()
            error: OSError | None = None
            try:
                _write_all(self._fd, data)
            except OSError as exc:
                error = exc
            try:
                written.get_loop().call_soon_threadsafe(_settle, written, None, error)
            except RuntimeError:
                return  # the event loop is closed: nobody writes any more


def _write_all(fd: int, data: bytes) -> None:
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
