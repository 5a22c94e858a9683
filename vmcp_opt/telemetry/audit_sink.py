"""Where audit lines go: stdout, stderr, or a file rotated by size (`audit.log` → `audit.log.1` → …), written by
the audit log's writer thread (telemetry/audit.py). Its own module: the audit log's events and its queue are
one thing to read, the bytes on disk another.

Several gateway processes may share one file (deploy/systemd runs several instances of one config). Each batch
is written under an exclusive `flock` of `audit.log.lock` beside the file, after checking that the path still
names the file held open (reopened when another process rotated it, or a tool such as logrotate moved it away)
and taking the size from the file itself, not from this process's writes. So, between processes of this version
on one host: every line counted as written is in the file or a rotated copy, whole (a batch is one `O_APPEND`
write per file, and a failed one is cut back), no file passes `max_file_bytes`, and one process rotates at a
time. A file moved by another tool is left at the next batch; the batch being written as it moves lands in the
moved file. The lock is waited for on the writer thread, never on the event loop: a process whose disk hangs
holds the others' writers, not their requests. A device or pipe (`/dev/full`) is neither locked nor rotated.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vmcp_opt.config import AuditConfig
from vmcp_opt.config.telemetry import audit_output_path, audit_output_problem
from vmcp_opt.file_writes import append_whole, same_file


class AuditOutputError(Exception):
    """`telemetry.audit.output` cannot be opened for writing at start; the message names it and why."""


class Sink:
    """stdout, stderr, or a file rotated by size: `audit.log` → `audit.log.1` → … → `audit.log.<backups>`.

    The file is opened at start (a path that cannot be written stops the start, `AuditOutputError`), created
    0600 (with `include_data` it may hold personal data), and rotated before a line would pass `max_bytes`."""

    def __init__(self, config: AuditConfig, base_dir: str) -> None:
        self.max_bytes = config.max_file_bytes
        self.backups = config.backups
        self.path: Path | None = None
        self.lines = 0  # lines written so far
        self._stream: BinaryIO | None = None
        self._file: BinaryIO | None = None
        self._size = 0  # the open file's size when the lines being written started
        self._lock_path: Path | None = None  # None: not a regular file, written as it is
        self._lock: int | None = None  # descriptor of the open lock file
        if config.output in ("stdout", "stderr"):
            self._stream = sys.stdout.buffer if config.output == "stdout" else sys.stderr.buffer
            return
        self.path = audit_output_path(config.output, base_dir)
        problem = audit_output_problem(self.path)  # checked at load too; the files may have changed since
        if problem:
            raise AuditOutputError(f"telemetry.audit.output: {problem}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            raise AuditOutputError(f"telemetry.audit.output: cannot write {self.path}: {exc.strerror or exc}") from None
        assert self._file is not None
        if stat.S_ISREG(os.fstat(self._file.fileno()).st_mode):
            self._lock_path = self.path.with_name(f"{self.path.name}.lock")
            try:
                self._lock_descriptor()
            except OSError as exc:
                reason = exc.strerror or exc
                raise AuditOutputError(f"telemetry.audit.output: cannot create {self._lock_path}: {reason}") from None

    def write(self, lines: list[bytes]) -> None:
        if self._stream is not None:
            self._stream.write(b"".join(lines))
            self._stream.flush()
            self.lines += len(lines)
            return
        with self._locked():
            self._follow_path()
            assert self._file is not None
            self._size = os.fstat(self._file.fileno()).st_size  # other processes' lines count too
            pending: list[bytes] = []
            size = self._size
            for line in lines:
                if size and size + len(line) > self.max_bytes and self._lock_path is not None:
                    self._flush(pending)
                    pending = []
                    self._rotate()
                    size = self._size
                pending.append(line)
                size += len(line)
            self._flush(pending)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Held while a batch is checked, written and rotated: no other process writes or rotates meanwhile."""
        if self._lock_path is None:
            yield
            return
        descriptor = self._lock_descriptor()
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)

    def _lock_descriptor(self) -> int:
        """The lock file's descriptor, reopened when the file at its path is another (one deleted is made again:
        processes locking different files would not exclude each other)."""
        assert self._lock_path is not None
        if self._lock is not None and same_file(self._lock, self._lock_path):
            return self._lock
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        self._lock = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._lock

    def _follow_path(self) -> None:
        """Opens the file at the path when the one open is not it: another process rotated it, a tool moved it,
        or a rotation failed to reopen."""
        if self._file is not None:
            if same_file(self._file.fileno(), self._path()):
                return
            self._close_file()
        self._open()

    def _flush(self, lines: list[bytes]) -> None:
        """Writes `lines` whole or not at all: after a failed write (disk full) the file is cut back to where it
        was, as a part of a line would run into the next one. Under the lock: no other process wrote since."""
        assert self._file is not None
        data = b"".join(lines)
        append_whole(self._file.fileno(), data, self._size)  # unbuffered: nothing held back to come later
        self._size += len(data)
        self.lines += len(lines)

    def _open(self) -> None:
        path = self._path()
        # 0600 for a new file (the umask may only narrow it); an existing one keeps the mode it was given.
        # Unbuffered: a buffer that failed to flush would be written later, after lines counted as lost.
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(descriptor, "ab", buffering=0)
        self._size = os.fstat(descriptor).st_size

    def _rotate(self) -> None:
        """Under the lock: the sizes it was decided on are the files', no other process moves them meanwhile.
        A file missing (moved by another tool) is skipped."""
        path = self._path()
        self._close_file()
        for n in range(self.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(path.with_name(f"{path.name}.{n}"), path.with_name(f"{path.name}.{n + 1}"))
        with contextlib.suppress(FileNotFoundError):
            if self.backups:
                os.replace(path, path.with_name(f"{path.name}.1"))
            else:
                path.unlink()
        self._open()

    def _path(self) -> Path:
        assert self.path is not None
        return self.path

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def close(self) -> None:
        """Never raises: it runs in the gateway's shutdown, which still has traces and backends to close."""
        self._close_file()
        lock, self._lock = self._lock, None
        if lock is not None:
            with contextlib.suppress(OSError):
                os.close(lock)
