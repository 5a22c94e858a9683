"""One helper thread for work that can overlap its caller's, taken only when it is free.

A find_tool search has two pieces of work that need not wait for each other: the query's embedding (ONNX
Runtime, which releases the GIL) and the keyword arm; and a long request's query groups are independent
runs. On a machine with a second core the helper runs one while the caller runs the other. It is never
queued for: when another request holds it, the caller does the work itself, so concurrent searches cost
what they cost before and none waits behind another's work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class SideThread:
    def __init__(self, name: str, *, enabled: bool | None = None) -> None:
        self.name = name
        # Off on one core: the helper would only take turns with its caller.
        self.enabled = (os.cpu_count() or 1) > 1 if enabled is None else enabled
        self._free = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def try_submit(self, work: Callable[[], T]) -> Future[T] | None:
        """`work` started on the helper thread, or None when it is off or busy (then run it yourself)."""
        if not self.enabled or not self._free.acquire(blocking=False):
            return None
        try:
            if self._pool is None:  # started at first use: most gateways never need it
                self._pool = ThreadPoolExecutor(1, thread_name_prefix=self.name)
            future = self._pool.submit(work)
        except BaseException:
            self._free.release()
            raise
        future.add_done_callback(lambda _: self._free.release())
        return future
