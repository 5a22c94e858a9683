"""glibc malloc's arenas, capped for the serving process.

glibc gives a thread that finds the arenas in use an arena of its own, up to eight per core, and each keeps
what its threads freed for their reuse. The gateway runs many threads (the event loop, anyio's worker
threads, ONNX Runtime's, the optimizer's builders), and how many arenas they took, and kept, varied from one
start to the next with the machine's load. The demo gateway's RSS once vectors were ready, 2026-12-02 on the
2 loaded cores (bench/README.md, Footprint): glibc's default 253 to 294 MiB over seven starts; two arenas
248 to 251 MiB every time (one arena: the same), with the same start-up time and find_tool answers.

Blocks of 1 MiB and more are mapped on their own and unmapped when freed (`MMAP_THRESHOLD`, fixed): glibc's
threshold otherwise rises with each large block freed, up to 32 MiB, after which large answers live in the
arenas and their memory stays with the process. 90 clients each leaving a 9 MB answer unread until the write
deadline reset them (session 25): 779 MB RSS after, kept; with the threshold fixed, 138 MB.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

ARENAS = 2
MMAP_THRESHOLD = 1024 * 1024
_M_ARENA_MAX = -8  # <malloc.h>
_M_MMAP_THRESHOLD = -3


def cap_malloc_arenas(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """At most `arenas` malloc arenas from now on, and blocks of `mmap_threshold` bytes or more mapped on their own
    (call it before the threads start): Linux with glibc only; a setting whose variable is set (`MALLOC_ARENA_MAX`,
    `MALLOC_MMAP_THRESHOLD_`) is left as the environment says. True when the arenas were capped."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    return "MALLOC_ARENA_MAX" not in os.environ and bool(mallopt(_M_ARENA_MAX, arenas) == 1)


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")  # None, or ValueError, elsewhere (musl)
        mallopt = ctypes.CDLL(None).mallopt if glibc else None
    except (OSError, ValueError, AttributeError):
        return None
    if mallopt is None:
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt  # type: ignore[no-any-return]
