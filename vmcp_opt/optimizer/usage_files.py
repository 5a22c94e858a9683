"""Where the co-usage graph (optimizer/usage.py) is kept: `UsageHistory`, what the gateway needs of a store,
and `FileUsageHistory`, `usage.json` in the index directory.

`vmcp index usage --clear` (`FileUsageHistory.clear`) deletes the file and writes a marker beside it
(`.usage.json.cleared`, a new token each time). A running gateway stats both at every sync; when the marker
changed it drops everything it holds, saved or not, so neither its ranking nor its next save brings back what
was learned before the clear. Every gateway sharing the directory notices on its own: the marker stays.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Protocol

from vmcp_opt.optimizer.file_lock import exclusive, write_atomically
from vmcp_opt.optimizer.usage import UsageGraph, lock_path

logger = logging.getLogger(__name__)

# Seconds a save or a clear waits for the history's lock. Its holders keep it for one merge (a read and a
# write of usage.json): one that keeps it longer is stuck (stopped, on a hung mount), and waiting for ever
# would stall the saver and the gateway's shutdown. The counts not saved stay for the next sync.
LOCK_WAIT = 5.0


class UsageHistory(Protocol):
    """Where the co-usage graph is kept between runs and shared: a file (`FileUsageHistory`), or Redis for
    replicas (vmcp_opt/shared/usage_history.py)."""

    # Others change it while this gateway runs (replicas, gateways sharing an index_dir, `vmcp index usage
    # --clear`): merge every interval, not only after a change.
    shared: bool
    where: str

    def load(self) -> UsageGraph:
        """The kept graph; an empty one when there is none (or, said in a warning, it cannot be read)."""
        ...

    def save(self, graph: UsageGraph) -> None:
        """Add `graph`'s new counts to the kept history and rank with the whole (`UsageGraph.merge`)."""
        ...


class FileUsageHistory:
    """`index_dir/usage.json`, merged under a file lock by every gateway sharing the directory.

    Shared: the other gateways on the directory write it too, and `vmcp index usage --clear` deletes it, so
    every sync looks (two `stat`s, no lock, no read while neither the file nor the clear marker changed)
    and merges when either changed, not only when this gateway learned something.
    """

    shared = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self.marker = cleared_marker(path)
        # The clear marker's text when this gateway last synced (None: no clear yet); unknown until the
        # first load or save, which take the marker as they find it.
        self._cleared: str | None = None
        self._marker_read = False
        # Both files' stat when this gateway last read or wrote the history: unchanged, a sync has nothing to read.
        self._seen: tuple[_Stamp, _Stamp] | None = None

    def load(self) -> UsageGraph:
        try:
            self._take_marker(None)
            seen = self._stamps()  # before the read: a write in between makes the next sync read again
            graph = UsageGraph.load(self.path)  # an unreadable file is moved aside to usage.json.corrupt
            self._seen = seen
            return graph
        except Exception as exc:  # e.g. the corrupt file could not be moved aside: start empty all the same
            logger.warning("optimizer: usage history %s not loaded (%s); starting with none", self.path, exc)
            return UsageGraph()

    def save(self, graph: UsageGraph) -> None:
        if not graph.has_new and self._seen is not None and self._stamps() == self._seen:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(lock_path(self.path), timeout=LOCK_WAIT):
            self._take_marker(graph)
            graph.merge_file(self.path)
            self._seen = self._stamps()

    def clear(self) -> bool:
        """Delete the history and mark the clear, so running gateways drop what they hold instead of writing
        it back (`vmcp index usage --clear`); whether there was a history file. OSError when the directory
        cannot be written, or its lock not had within `LOCK_WAIT` (`LockTimeout`, naming who holds it)."""
        with exclusive(lock_path(self.path), timeout=LOCK_WAIT):
            existed = self.path.exists()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            # A new token each time: two clears within a clock tick are still two changes.
            write_atomically(self.marker, json.dumps({"cleared_at": stamp, "token": uuid.uuid4().hex}) + "\n")
            self.path.unlink(missing_ok=True)
        return existed

    def _take_marker(self, graph: UsageGraph | None) -> None:
        """Adopt the clear marker as it is now; with `graph`, a marker that changed since the last look (a
        clear meanwhile) first empties it: nothing it learned before is ranked with or written back."""
        cleared = _read_marker(self.marker)
        changed = self._marker_read and cleared != self._cleared
        self._cleared, self._marker_read = cleared, True
        if graph is None or not changed or cleared is None:  # a marker deleted by hand is no clear
            return
        dropped = graph.forget()
        logger.info(
            "optimizer: usage history %s was cleared (vmcp index usage --clear): ranking without what was "
            "learned before it (%d tool uses not yet saved dropped)",
            self.path,
            dropped,
        )

    def _stamps(self) -> tuple[_Stamp, _Stamp]:
        return _stamp(self.path), _stamp(self.marker)


# A file's identity and version as `stat` gives them (inode, size, mtime); None when there is no file.
_Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> _Stamp:
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def cleared_marker(path: Path) -> Path:
    """Where `vmcp index usage --clear` marks that it deleted the history at `path`."""
    return path.with_name(f".{path.name}.cleared")


def _read_marker(marker: Path) -> str | None:
    try:
        return marker.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
