"""Where audit lines go: stdout, stderr, or a file rotated by size (`audit.log` → `audit.log.1` → …), written by
the audit log's writer thread (telemetry/audit.py). Its own module: the audit log's events and its queue are
one thing to read, the bytes on disk another."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import BinaryIO

from vmcp_opt.config import AuditConfig
from vmcp_opt.config.telemetry import audit_output_path, audit_output_problem


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
        self._size = 0
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

    def write(self, lines: list[bytes]) -> None:
        if self._stream is not None:
            self._stream.write(b"".join(lines))
            self._stream.flush()
            self.lines += len(lines)
            return
        if self._file is None:  # a rotation that failed to reopen: try again
            self._open()
        pending: list[bytes] = []
        size = self._size
        for line in lines:
            if size and size + len(line) > self.max_bytes:
                self._flush(pending)
                pending = []
                self._rotate()
                size = self._size
            pending.append(line)
            size += len(line)
        self._flush(pending)

    def _flush(self, lines: list[bytes]) -> None:
        """Writes `lines` whole or not at all: after a failed write (disk full) the file is cut back to where it
        was, as a part of a line would run into the next one."""
        assert self._file is not None
        data = memoryview(b"".join(lines))
        done = 0
        try:
            while done < len(data):  # unbuffered: a write may take only a part
                taken = self._file.write(data[done:])
                if not taken:
                    raise OSError(errno.EIO, "the audit file took no bytes")
                done += taken
        except OSError:
            with contextlib.suppress(OSError):  # a device (/dev/full) cannot be cut
                os.ftruncate(self._file.fileno(), self._size)
            raise
        self._size += done
        self.lines += len(lines)

    def _open(self) -> None:
        assert self.path is not None
        # 0600 for a new file (the umask may only narrow it); an existing one keeps the mode it was given.
        # Unbuffered: a buffer that failed to flush would be written later, after lines counted as lost.
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(descriptor, "ab", buffering=0)
        self._size = os.fstat(descriptor).st_size

    def _rotate(self) -> None:
        assert self.path is not None and self._file is not None
        self._file.close()
        self._file = None
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()

    def close(self) -> None:
        """Never raises: it runs in the gateway's shutdown, which still has traces and backends to close."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
