"""One helper thread for work that can overlap its caller's, taken only when it is free.

A long find_tool request's query groups are independent ONNX Runtime runs (which release the GIL): on a
machine with a second core the helper runs some while the caller runs the rest (`OnnxEncoder.encode`). It
is never queued for: when another request holds it, the caller does the work itself, so concurrent
searches cost what they cost before and none waits behind another's work. (Running the keyword arm here
while the query is embedded was measured and dropped: 0.2 ms slower at p50 on a quiet host, the hop and
the GIL costing more than the ~0.2 ms arm.)
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
