"""The index directories under `<data_dir>/indexes/`: which config each belongs to, which a gateway uses now,
and which can go (`vmcp index list`, `vmcp index prune`).

Unset, `optimizer.index_dir` is `<data_dir>/indexes/<config stem>-<hash of its path>`, one per config file: a
user who tried twenty configs, or moved one, keeps twenty indexes (tens of MB each at 10k tools, and the usage
history), and the hashed name does not say whose it is. So a gateway on such a directory writes `owner.json`
there (the config's absolute path, and when a gateway last used it: at its start, then at most once a day while
it runs; atomically, and never fatal: a read-only data dir just goes without). An explicit `optimizer.index_dir`
is the user's own and gets no owner file.

A gateway also holds a shared flock on the directory's `.in-use` file for its whole life, as processes serving an
ONNX export do (optimizer/export_pruning.py): the kernel drops it when the process ends, killed too. Listing tests
the exclusive lock without waiting; pruning takes it without waiting, skips the directory when it cannot, and
renames the directory aside while holding it, so a gateway starting meanwhile finds no half-removed index: its
lock then lands on the renamed file, it sees so, and makes the directory again.

Nothing outside `<data_dir>/indexes/` is touched: an entry that is a symbolic link, or resolves elsewhere, is
listed and never removed. A directory without an owner file (written before it existed) is "unknown", and counts
as last used when its newest file was written.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vmcp_opt.config import VmcpConfig
from vmcp_opt.file_writes import same_file
from vmcp_opt.optimizer.file_lock import process_gone, write_atomically

log = logging.getLogger(__name__)

INDEXES = "indexes"
OWNER_FILE = "owner.json"
IN_USE_FILE = ".in-use"
# Seconds between two writes of a directory's last use: a running gateway's use is told by its lock, so the time
# only has to say, after it stops, roughly when that was; once a day costs nothing and wears no disk.
RECORD_EVERY = 86_400.0
# An owner file is a path and a time: a larger one is not ours, and is not read whole.
OWNER_MAX_BYTES = 16_384
# Tries at the in-use lock: a pruner holds the exclusive one only for a rename, so it is free again at once.
HOLD_TRIES = 50
_HOLD_POLL = 0.05
# What a directory a pruning renamed aside is called while it is removed: `.<name>-pruned-<pid>`.
PRUNED_MARK = "-pruned-"


@dataclass(frozen=True)
class Owner:
    """What `owner.json` says: the config's absolute path (None: no config file), and its last use (epoch s)."""

    config: str | None
    last_used: float


@dataclass(frozen=True)
class IndexDir:
    """One entry of `<data_dir>/indexes/`, as `vmcp index list` shows it."""

    path: Path
    owner: Owner | None  # None: no readable owner file ("unknown")
    size: int  # bytes on disk
    last_used: float  # the owner's time, else the newest file's mtime (epoch s)
    in_use: bool  # a gateway holds its lock now
    # Why pruning never touches it (a symbolic link, outside the indexes directory); None when it may.
    untouchable: str | None = None

    @property
    def config_exists(self) -> bool | None:
        """Whether the owner's config file is still there (None: unknown, or none)."""
        if self.owner is None or self.owner.config is None:
            return None
        return Path(self.owner.config).is_file()

    def owner_line(self) -> str:
        """Whose it is, in a sentence's words."""
        if self.owner is None:
            return "config unknown"
        if self.owner.config is None:
            return "no config file"
        gone = "" if self.config_exists else ", gone"
        return f"config {self.owner.config}{gone}"

    def last_used_text(self, now: float | None = None) -> str:
        """Its last use, and how long ago; for a directory without an owner file, its newest file's time."""
        if not self.last_used:
            return "-"
        days = max(0.0, (time.time() if now is None else now) - self.last_used) / 86_400
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.last_used))
        newest = ", newest file" if self.owner is None else ""
        return f"{stamp} ({days:.0f} days ago{newest})"


# -- the gateway's side -----------------------------------------------------------------------------------


def read_owner(directory: Path) -> Owner | None:
    """`directory`'s owner file, or None when it has none or it is not one we wrote (never raises)."""
    path = directory / OWNER_FILE
    try:
        if not path.is_file():  # a FIFO would block the read
            return None
        with path.open("rb") as file:
            raw = file.read(OWNER_MAX_BYTES + 1)
        if len(raw) > OWNER_MAX_BYTES:
            return None
        data = json.loads(raw)
        config, used = data.get("config"), data["last_used"]
        if config is not None and not isinstance(config, str):
            return None
        when = datetime.fromisoformat(used).timestamp()
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return Owner(config, when)


def record_use(directory: Path, config: Path | None, now: float | None = None) -> bool:
    """Say in `directory`'s owner file that the gateway of `config` uses it now, unless it said so within
    `RECORD_EVERY` for the same config; True when written. Never raises: the index serves without it."""
    now = time.time() if now is None else now
    known = read_owner(directory)
    config_text = None if config is None else str(config)
    if known is not None and known.config == config_text and 0 <= now - known.last_used < RECORD_EVERY:
        return False
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    text = json.dumps({"config": config_text, "last_used": stamp}, indent=2) + "\n"
    try:
        write_atomically(directory / OWNER_FILE, text)
    except OSError as exc:  # a read-only or full data dir
        log.debug("index: owner file not written in %s: %s", directory, exc)
        return False
    return True


class IndexDirHold:
    """A gateway's use of its index directory, for its life: the in-use lock, and the owner file kept current
    (`start`, then once a day on a thread of its own). `close` lets go."""

    def __init__(self, directory: Path, config: Path | None, *, owned: bool) -> None:
        self.directory = directory
        self.config = config
        self.owned = owned  # the default placement: the owner file is written
        self._descriptor: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._descriptor = _hold(self.directory)
        if not self.owned:
            return
        record_use(self.directory, self.config)
        self._thread = threading.Thread(target=self._record_daily, name="index-dir-owner", daemon=True)
        self._thread.start()

    def _record_daily(self) -> None:
        while not self._stop.wait(RECORD_EVERY):
            record_use(self.directory, self.config)

    def close(self) -> None:
        self._stop.set()
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def hold_index_dir(config: VmcpConfig) -> IndexDirHold:
    """Mark the config's index directory in use for the gateway's life when it lies under `<data_dir>/indexes/`
    (pruning's ground), with an owner file when the config left it to the default placement."""
    directory = config.index_dir()
    source = config.source  # the default directory's name comes from it (config/document.py `index_dir`)
    owned = config.optimizer.index_dir is None
    hold = IndexDirHold(directory, source, owned=owned)
    if owned or _inside(directory, config.data_dir_path() / INDEXES):
        hold.start()
    return hold


def _hold(directory: Path) -> int | None:
    """A descriptor holding `directory`'s in-use mark (shared), or None when it cannot be made (logged)."""
    for _ in range(HOLD_TRIES):
        marker = directory / IN_USE_FILE
        try:
            directory.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(marker, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            log.debug("index: cannot mark %s in use: %s", directory, exc)
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a pruner, for as long as a rename takes
            os.close(descriptor)
            time.sleep(_HOLD_POLL)
            continue
        except OSError as exc:  # a file system without locks
            os.close(descriptor)
            log.debug("index: cannot mark %s in use: %s", directory, exc)
            return None
        if same_file(descriptor, marker):
            return descriptor
        os.close(descriptor)  # renamed aside by a pruner before the lock was had: make the directory again
    log.info("index: %s stayed locked by a pruning; serving without marking it in use", directory)
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().parent == root.resolve()
    except OSError:
        return False


# -- listing ---------------------------------------------------------------------------------------------


def list_index_dirs(data_dir: Path) -> list[IndexDir]:
    """Every directory under `<data_dir>/indexes/`, by name; hidden ones (a pruning's leftovers) left out."""
    root = data_dir / INDEXES
    try:
        entries = sorted(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    real_root = root.resolve()
    found = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        untouchable = None
        if entry.is_symlink():
            untouchable = "a symbolic link"
        elif entry.resolve().parent != real_root:
            untouchable = "resolves outside the indexes directory"
        found.append(_describe(entry, untouchable))
    return found


def _describe(entry: Path, untouchable: str | None, *, locked_here: bool = False) -> IndexDir:
    """`locked_here`: this process holds the exclusive lock (a pruning): nobody else can."""
    owner = read_owner(entry) if untouchable is None else None
    size, newest = _usage(entry) if untouchable is None else (0, 0.0)
    last_used = owner.last_used if owner is not None else newest
    in_use = untouchable is None and not locked_here and lock_held(entry)
    return IndexDir(entry, owner, size, last_used, in_use, untouchable)


def _usage(directory: Path) -> tuple[int, float]:
    """(bytes on disk, newest mtime) of the files under `directory`, links not followed. The in-use mark's time
    is no use: a pruning or a listing may have made it."""
    size, newest = 0, 0.0
    for path in _files(directory):
        try:
            stat = path.lstat()
        except OSError:
            continue
        size += stat.st_blocks * 512
        if path.name != IN_USE_FILE:
            newest = max(newest, stat.st_mtime)
    return size, newest


def _files(directory: Path) -> Iterator[Path]:
    for parent, _dirs, files in os.walk(directory, followlinks=False):
        yield from (Path(parent) / name for name in files)


def lock_held(directory: Path) -> bool:
    """Whether a process holds `directory`'s in-use mark: tried exclusively, without waiting, and let go."""
    descriptor = _open_marker(directory / IN_USE_FILE)
    if descriptor is None:  # no mark: no gateway of this version ever held it
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a file system without locks: nobody holds one there either
        return False
    finally:
        os.close(descriptor)  # closing lets go of a lock had
    return False


def _open_marker(marker: Path) -> int | None:
    """`marker` open for writing where it can be (NFS's exclusive lock wants it), else for reading; None without it."""
    for flags in (os.O_RDWR, os.O_RDONLY):
        try:
            return os.open(marker, flags | os.O_NOFOLLOW)
        except PermissionError:
            continue
        except OSError:
            return None
    return None


# -- pruning ---------------------------------------------------------------------------------------------


# A config "gone" for prune may live where this process cannot see it: a container sharing the data directory
# (`/etc/vmcp/vmcp.yaml` in its own mount namespace) looks gone from the host. Such a directory is removed for that
# only once no gateway has used it for a day (a running one records its use daily), not the moment it is listed.
GONE_GRACE_DAYS = 1.0


def prune_reason(entry: IndexDir, older_than_days: float, now: float | None = None) -> str | None:
    """Why `entry` may go (its config file is gone, or it was unused past the age), or None when it stays. Whether
    a gateway holds it now is the caller's to check: it is kept then, whatever this says."""
    if entry.untouchable is not None:
        return None
    now = time.time() if now is None else now
    days = (now - entry.last_used) / 86_400
    if entry.config_exists is False and days > GONE_GRACE_DAYS:
        return "its config file is gone"
    if days > older_than_days:
        return f"unused for {days:.0f} days"
    return None


def remove_unless_in_use(entry: IndexDir, older_than_days: float) -> str | None:
    """Remove `entry`'s directory unless a gateway holds it or started since it was listed (its owner file then
    says so); None when removed, else why it stays. Under the exclusive lock, renamed aside, then deleted."""
    directory = entry.path
    if directory.is_symlink():  # swapped for a link since it was listed
        return "a symbolic link"
    try:  # writable: NFS's exclusive lock wants it; a link in its place is not followed out of the directory
        descriptor = os.open(directory / IN_USE_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        return f"cannot lock it: {exc.strerror or exc}"
    aside = directory.with_name(f".{directory.name}{PRUNED_MARK}{os.getpid()}")
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "a running gateway holds it"
        if prune_reason(_describe(directory, None, locked_here=True), older_than_days) is None:
            return "used again since it was listed"
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(directory, aside)
    except OSError as exc:
        return f"not removed: {exc.strerror or exc}"
    finally:
        os.close(descriptor)
    try:
        shutil.rmtree(aside)
    except OSError as exc:  # the rest goes with the next prune's leftovers
        return f"partly removed ({aside} is left): {exc.strerror or exc}"
    return None


def remove_leftovers(data_dir: Path) -> int:
    """Remove what earlier prunings renamed aside and did not finish deleting (their process gone); bytes freed."""
    freed = 0
    root = data_dir / INDEXES
    for path in root.glob(f".*{PRUNED_MARK}*") if root.is_dir() else ():
        pid = path.name.rsplit(PRUNED_MARK, 1)[1]
        if path.is_symlink() or not path.is_dir() or not pid.isdigit() or not process_gone(int(pid)):
            continue
        freed += _usage(path)[0]
        shutil.rmtree(path, ignore_errors=True)
    return freed
