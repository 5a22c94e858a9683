"""Files the gateways on one index_dir share: an exclusive lock every process that opens it respects, and
writes a reader never sees half of, and unreadable files kept aside rather than overwritten."""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

# Seconds after which a temporary file is a leftover whoever wrote it (a pid reused since, another host's writer,
# whose pid cannot be tested here): no write of an index file takes that long.
STALE_WRITE_SECONDS = 600.0
# How often a bounded wait tries the lock again (flock has no timed wait).
POLL_SECONDS = 0.1
# What a holder writes of itself into the lock file, at most: a waiter quotes it.
HOLDER_CHARS = 200


class LockTimeout(TimeoutError):
    """The lock was not had within the wait: the message names the lock file and who holds it. A
    `TimeoutError`, so an `OSError`: where a read-only or full index_dir is handled, this is too."""


@contextmanager
def exclusive(
    lock_path: Path, on_wait: Callable[[str], None] | None = None, timeout: float | None = None
) -> Iterator[None]:
    """Held until the block ends. An flock: the kernel releases it when its holder dies, so a replica
    killed mid-update never blocks the others. `on_wait` is called once, with who holds it (`holder`), when
    another process does. A holder that is alive but stuck (stopped with Ctrl-Z, paused, on a hung mount)
    would block the waiter for ever: with `timeout`, `LockTimeout` after that many seconds instead."""
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(holder(lock_path))
            _wait(handle, lock_path, timeout)
        try:
            _sign(handle)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait(handle: IO[str], lock_path: Path, timeout: float | None) -> None:
    if timeout is None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(f"{holder(lock_path)} has held {lock_path} for over {timeout:g} s") from None
            time.sleep(POLL_SECONDS)


def _sign(handle: IO[str]) -> None:
    """Write who holds the lock into its file, for a waiter's message; best effort (the lock is what counts)."""
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:3]]) if sys.argv and sys.argv[0] else "python"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    said = f"process {os.getpid()} ({command}) on {socket.gethostname()}, since {stamp}\n"
    try:  # unbuffered: a write refused by a full disk must not come back when the file is closed
        os.ftruncate(handle.fileno(), 0)
        os.write(handle.fileno(), said.encode("utf-8", "replace")[:HOLDER_CHARS])
    except OSError:
        pass


def holder(lock_path: Path) -> str:
    """Who holds `lock_path`, as its holder wrote it ("another process" when it did not say)."""
    try:
        with lock_path.open(encoding="utf-8", errors="replace") as file:
            said = file.read(HOLDER_CHARS).splitlines()
    except OSError:
        said = []
    text = "".join(c for c in said[0] if c.isprintable()) if said else ""
    return text or "another process"


def process_gone(pid: int) -> bool:
    """Whether no process `pid` runs on this host (another user's runs: not gone). A writer that died leaves its
    temporary file behind; one of another host, sharing the directory, may well run though its pid does not here."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


# The longest host name a temporary file's name carries (a file name is at most 255 bytes).
HOST_CHARS = 64
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._]+")
_nonce: tuple[int, str] | None = None  # (pid, nonce): a forked child draws its own


def this_host() -> str:
    """This host's name as a file name carries it: letters, digits, `.` and `_` only (a `-` separates the name's
    fields), at most `HOST_CHARS`."""
    return _NOT_IN_NAME.sub("_", socket.gethostname())[:HOST_CHARS] or "_"


def writer_tag() -> str:
    """`<host>-<pid>-<nonce>`: who writes a temporary file, told apart from every other writer on a shared
    directory. The pid alone is not: under tini (PID 1) the gateway has the same pid in every pod, and its pod's
    restarts; the nonce, drawn once a process, tells this process from an earlier one of the same pid and host."""
    global _nonce
    pid = os.getpid()
    if _nonce is None or _nonce[0] != pid:
        _nonce = (pid, secrets.token_hex(4))
    return f"{this_host()}-{pid}-{_nonce[1]}"


def temporary_name(prefix: str, suffix: str) -> str:
    """`<prefix><host>-<pid>-<nonce>-<hex><suffix>`: a name no other writer, in this process or any other sharing
    the directory, takes (`remove_dead_writers` reads who wrote it)."""
    return f"{prefix}{writer_tag()}-{secrets.token_hex(4)}{suffix}"


def _writer_gone(name: str) -> bool:
    """Whether the writer of a temporary file whose name (less prefix and suffix) is `name` is known gone: its
    pid, on this host, runs no more (never this process's pid). `<host>-<pid>-<nonce>-<hex>`, or `<pid>-<hex>` as
    an earlier release named them (on this host, then: shared directories were not told apart); of another host,
    or of a name of neither form, only age tells."""
    fields = name.rsplit("-", 3)
    if len(fields) == 4:
        host, pid = fields[0], fields[1]
        if host != this_host():
            return False
    elif len(fields) == 2:
        pid = fields[0]
    else:
        return False
    return pid.isdigit() and int(pid) != os.getpid() and process_gone(int(pid))


def remove_dead_writers(directory: Path, prefix: str, suffix: str, stale_seconds: float) -> list[Path]:
    """Remove the temporary files `<prefix>...<suffix>` in `directory` whose writer is gone (`_writer_gone`), or
    older than `stale_seconds` (a reused pid, another host's writer); the ones removed. Call under the lock every
    writer takes: then none of these is being written (but by one that timed out on the lock, and wrote without
    it: its pid runs, or it is of another host and its file is young)."""
    removed = []
    for tmp in directory.glob(f"{prefix}*{suffix}"):
        try:
            stale = time.time() - tmp.stat().st_mtime > stale_seconds
            if stale or _writer_gone(tmp.name.removeprefix(prefix).removesuffix(suffix)):
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # removed by another process meanwhile, or not ours to remove: it stays
            continue
    return removed


def remove_dead_writes(path: Path) -> list[Path]:
    """The temporary files `write_atomically` left beside `path` when their writer died mid-write (killed, out of
    memory, a host crash), removed as `remove_dead_writers` says; the ones removed."""
    return remove_dead_writers(path.parent, f".{path.name}.", ".tmp", STALE_WRITE_SECONDS)


def write_atomically(path: Path, text: str | Iterable[str]) -> None:
    """`text` (or its pieces, written as they come) to `path` through a temporary file renamed over it: a reader
    sees the old file or the new one, a failed write (a full disk) leaves the old file and no temporary one, and a
    host crash after it returns leaves the new file whole (`replace_durably`), not an empty one."""
    tmp = path.with_name(temporary_name(f".{path.name}.", ".tmp"))  # two writers (two pods' pid 1), two names
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 less the umask, as before
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            if isinstance(text, str):
                file.write(text)
            else:
                file.writelines(text)
            file.flush()
            os.fsync(file.fileno())
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename `tmp` (written and fsynced by the caller) over `path`, then fsync the directory: without the
    second, a crash can forget the rename, and without the first, the kernel may commit the rename before the
    data, so the file comes back empty (ext4 and XFS do both)."""
    os.replace(tmp, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Commit `directory`'s entries (a rename into it). Best effort: a file system that cannot fsync a directory
    (EINVAL on some network mounts) has no more to offer, and the rename it made stands."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def keep_aside(path: Path, keep: int = 3) -> Path:
    """Move `path` to a name of its own (`<name>.corrupt-<UTC time>`), so no later one overwrites it; only the
    newest `keep` such copies stay."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # Numbered past every copy of this second, not into the gap a removed one left: it would then order first.
    taken = [_set_aside_order(p)[1] for p in path.parent.glob(f"{path.name}.corrupt-{stamp}*")]
    number = max(taken, default=0) + 1
    aside = path.with_name(f"{path.name}.corrupt-{stamp}" + (f"-{number}" if number > 1 else ""))
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{number}")
    os.replace(path, aside)
    # Ordered by when each was set aside, which its name says: a rename keeps the file's own mtime, so by mtime a
    # file written long ago and set aside now was the oldest copy and went at once, though the warning named it.
    # No stat either: another process removing a copy meanwhile must not fail a move that was done.
    earlier = sorted(path.parent.glob(f"{path.name}.corrupt-*"), key=_set_aside_order)
    for old in earlier[:-keep]:
        old.unlink(missing_ok=True)
    return aside


_SET_ASIDE = re.compile(r"\.corrupt-(\d{8}T\d{6}Z)(?:-(\d+))?$")


def _set_aside_order(path: Path) -> tuple[str, int, str]:
    """(UTC stamp, number within that second, name) of a `keep_aside` copy; a name not of that form first."""
    match = _SET_ASIDE.search(path.name)
    if match is None:
        return "", 0, path.name
    return match.group(1), int(match.group(2) or 1), path.name
