"""glibc malloc's arenas, capped for the serving process.

glibc gives a thread that finds the arenas in use an arena of its own, up to eight per core, and each keeps
what its threads freed for their reuse. The gateway runs many threads (the event loop, anyio's worker
threads, ONNX Runtime's, the optimizer's builders), and how many arenas they took, and kept, varied from one
start to the next with the machine's load. The demo gateway's RSS once vectors were ready, 2026-12-02 on the
2 loaded cores (bench/README.md, Footprint): glibc's default 253 to 294 MiB over seven starts; two arenas
248 to 251 MiB every time (one arena: the same), with the same start-up time and find_tool answers.
"""

from __future__ import annotations

import ctypes
import os
import sys

ARENAS = 2
_M_ARENA_MAX = -8  # <malloc.h>


def cap_malloc_arenas(arenas: int = ARENAS) -> bool:
    """At most `arenas` malloc arenas from now on (call it before the threads start): Linux with glibc only,
    and not when `MALLOC_ARENA_MAX` is set (glibc read it already). True when capped."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")  # None, or ValueError, elsewhere (musl)
        mallopt = ctypes.CDLL(None).mallopt if glibc else None
    except (OSError, ValueError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas) == 1)
