"""Per-call costs of the libraries under the gateway that can be removed without changing what they do.

`install()` is called once when the MCP server is built (server/handlers.py); each change checks that the
library is the one it was written against and otherwise leaves it alone.

- anyio asks which event loop runs on nearly every call into it (`get_async_backend`: each checkpoint,
  memory-stream send or receive, `Event`, `CancelScope`, clock read; hundreds per proxied tools/call).
  Without `sniffio` installed (it is not a dependency of anyio 4.x), its `current_async_library` runs an
  `import asyncio` statement and `asyncio.get_running_loop()` inside a try each time: about 8 % of the
  gateway's CPU per proxied call on the 2026-07-28 path. The replacement answers the same ("asyncio" when a
  loop runs in this thread, else None) from asyncio's C accessor, without the import or the exception.
- The garbage collector's full (generation 2) collections walk every tracked object: with the gateway's
  imports and catalogue that is ~165,000 objects and ~90 ms of CPU with the event loop stopped, several
  times a minute under load (each one stalls every call in flight: the p99 under 32 clients).
  `freeze_heap` moves what exists at start-up (modules, config, the gateway, then the first catalogue)
  into the permanent generation (`gc.freeze`, O(1)), which later collections skip; it is still freed by
  reference counting when dropped, and what is created later is collected as before.
"""

from __future__ import annotations

import asyncio
import gc
import logging

logger = logging.getLogger(__name__)

_installed = False


def _current_async_library() -> str | None:
    return "asyncio" if asyncio._get_running_loop() is not None else None


def install() -> None:
    """Apply every speed-up that applies to the installed libraries (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        from anyio._core import _eventloop
    except ImportError:  # pragma: no cover - anyio moved its internals
        return
    original = getattr(_eventloop, "current_async_library", None)
    if getattr(_eventloop, "sniffio", object()) is None and getattr(original, "__module__", "") == _eventloop.__name__:
        _eventloop.current_async_library = _current_async_library
    else:  # pragma: no cover - sniffio present (it answers) or anyio changed
        logger.debug("anyio speed-up not applied")


def freeze_heap(*, collect: bool = False) -> None:
    """Exclude every object tracked now from later collections (`collect`: first free what is garbage)."""
    if collect:
        gc.collect()
    gc.freeze()
