"""A raw TCP server on an asyncio loop of its own thread: for tests whose peer must misbehave at the byte level
(a body cut off, a drip, a token endpoint that never finishes), which no HTTP framework would let it do."""

from __future__ import annotations

import asyncio
import threading


class LoopServer:
    """Serves `_handle` on 127.0.0.1 at a free `port` from `start()` to `stop()`."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()

    def start(self) -> None:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _shutdown(self) -> None:
        """Ends the connections still served, so that nothing is left pending when the loop stops."""
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
