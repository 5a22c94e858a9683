"""Appends that leave a file holding whole records only, and the check that a path still names an open file.

Shared by the audit sink (telemetry/audit_sink.py), the usage history's journal (optimizer/usage_files.py) and the
locks that mark a directory in use (optimizer/export_pruning.py, optimizer/index_dirs.py): `os.write` may store a
part of its bytes without an error (a disk that fills), and a part of a line runs into the next one, so both lines
are lost to every reader; a failed fsync leaves bytes whose writer will write them again.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def append_whole(descriptor: int, data: bytes, start: int, *, sync: bool = False) -> None:
    """`data` appended to the file open as `descriptor` (its end at `start`) whole, synced with `sync`, or OSError
    with the file cut back to `start` (a device such as /dev/full cannot be cut: left as it is)."""
    view = memoryview(data)
    try:
        while view:
            written = os.write(descriptor, view)
            if written <= 0:
                raise OSError(errno.ENOSPC, "the file took no bytes")
            view = view[written:]
        if sync:
            os.fsync(descriptor)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, start)
        raise


def same_file(descriptor: int, path: Path) -> bool:
    """Whether `path` still names the file open as `descriptor` (not renamed aside, not made again)."""
    try:
        named = path.stat()
    except OSError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)
