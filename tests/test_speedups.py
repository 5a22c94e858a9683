"""The library speed-ups (vmcp_opt/speedups.py) answer what the originals answer."""

from __future__ import annotations

import asyncio
import threading

import anyio
from anyio._core import _eventloop

from vmcp_opt import speedups


def test_current_async_library_answers_as_anyio_does() -> None:
    speedups.install()
    speedups.install()  # idempotent
    assert _eventloop.current_async_library() is None  # no loop in this thread

    async def inside() -> tuple[str | None, str | None]:
        seen: list[str | None] = []
        thread = threading.Thread(target=lambda: seen.append(_eventloop.current_async_library()))
        thread.start()
        thread.join()
        return _eventloop.current_async_library(), seen[0]

    assert asyncio.run(inside()) == ("asyncio", None)
    assert anyio.run(inside) == ("asyncio", None)
    if _eventloop.sniffio is None:
        assert _eventloop.current_async_library is speedups._current_async_library
