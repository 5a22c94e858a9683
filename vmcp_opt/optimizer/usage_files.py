"""Where the co-usage graph (optimizer/usage.py) is kept: `UsageHistory`, what the gateway needs of a store,
and `FileUsageHistory`, `usage.json` in the index directory with its journal, `usage.json.journal`.

Why a snapshot and a journal: rewriting the whole history at every sync cost ~1.9 s of CPU at a million pairs,
whatever little was learned. A sync now appends one line, what this gateway learned since the last one, to the
journal (and reads the lines other gateways on the directory appended since its last look): it costs what changed.
The journal is folded into a fresh snapshot (compaction: the history read from disk, the new counts added, bounded,
written atomically, then the journal removed) when the history is small (under `SMALL_HISTORY` bytes: a rewrite
costs nothing there, and every reader sees one whole file), when there is no snapshot of this layout yet, or when
the journal would pass `JOURNAL_RATIO` of the snapshot: the journal stays bounded by the bounded snapshot, and the
rewrites, each after that many bytes of changes, cost in proportion to the changes too. Syncs and compactions run
in the optimizer's saver thread (and `close`, off the event loop), the snapshot read, parsed and written a tool at a
time so the thread gives the GIL back between pieces (read whole, then split, a million pairs' 47 MB held it ~55 then
~20 ms), into plain dicts the garbage collector does not walk (optimizer/usage.py's note on `Kept`).

The snapshot is the JSON object it always was, one tool's companions a line, plus (past `SMALL_HISTORY`) a
`generation` token; its journal's first line names that token, so a journal left from another snapshot (a crash between a compaction's
two steps, a history replaced by an earlier release or by hand) is ignored, never added twice. A file of the
earlier layout is read as it is and rewritten in this one at the first sync that adds something. Crash safety: a
gateway killed mid-append leaves a torn last line, skipped with one warning (and cut off by the next writer, under
the lock); one killed mid-compaction leaves the previous snapshot and journal. At most that sync's counts are lost.

`vmcp index usage --clear` (`FileUsageHistory.clear`) deletes both files and writes a marker beside them
(`.usage.json.cleared`, a new token each time). A running gateway stats them at every sync; when the marker
changed it drops everything it holds, saved or not, so neither its ranking nor its next save brings back what
was learned before the clear. Every gateway sharing the directory notices on its own: the marker stays.

Just past ~450 lines on purpose: the snapshot, the journal and the clear marker are one file layout under one lock,
read and written together at each sync (a journal is only meaningful beside the snapshot generation it names).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Protocol, TextIO

from vmcp_opt.file_writes import append_whole
from vmcp_opt.optimizer.file_lock import exclusive, fsync_directory, keep_aside, write_atomically
from vmcp_opt.optimizer.usage import (
    FORMAT_VERSION,
    KEPT_ASIDE,
    Counts,
    Kept,
    NewerFormat,
    UsageGraph,
    add_counts,
    bounded,
    lock_path,
    parse_counts,
    remove_dead_saves,
    saved_counts,
)

logger = logging.getLogger(__name__)

# Seconds a save or a clear waits for the history's lock. Its holders keep it for one merge (a read and a
# write of usage.json): one that keeps it longer is stuck (stopped, on a hung mount), and waiting for ever
# would stall the saver and the gateway's shutdown. The counts not saved stay for the next sync.
LOCK_WAIT = 5.0
# A snapshot smaller than this is rewritten whole at each sync (no journal): it costs under a millisecond.
SMALL_HISTORY = 64 * 1024
# The journal is folded into the snapshot before it grows past this fraction of the snapshot's size.
JOURNAL_RATIO = 0.5
JOURNAL_VERSION = 1
_COMPACT = (",", ":")
# One encoder for the snapshot's lines: `json.dumps` with `separators` builds one per call, 40,000 a compaction.
_encode_compact = json.JSONEncoder(separators=_COMPACT).encode


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


@dataclass(frozen=True)
class _Position:
    """How far this gateway has read the history: the snapshot (its stat, token and size) and the journal (its
    inode, None when there is none of this snapshot, and the end of its last whole line)."""

    snapshot: _Stamp
    generation: str | None
    snapshot_size: int
    journal: int | None = None
    offset: int = 0
    torn: bool = False  # a partial last line follows `offset`


class FileUsageHistory:
    """`index_dir/usage.json` and its journal, merged under a file lock by every gateway sharing the directory.

    Shared: the other gateways on the directory write it too, and `vmcp index usage --clear` deletes it, so
    every sync looks (three `stat`s, no lock, no read while nothing changed) and merges when something changed,
    not only when this gateway learned something: reading only the journal lines added since its last look,
    or everything again when the snapshot changed (another gateway's compaction, a clear).
    """

    shared = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = journal_path(path)
        self.where = str(path)
        self.marker = cleared_marker(path)
        # The clear marker's text when this gateway last synced (None: no clear yet); unknown until the
        # first load or save, which take the marker as they find it.
        self._cleared: str | None = None
        self._marker_read = False
        # The files' stat when this gateway last read or wrote the history: unchanged, a sync has nothing to read.
        self._seen: tuple[_Stamp, _Stamp, _Stamp] | None = None
        # What of the history the graph holds (None: unknown, the next sync reads it whole).
        self._at: _Position | None = None
        # The torn journal line last warned about (journal inode, offset): one warning per torn line.
        self._torn_warned: tuple[int | None, int] | None = None
        # Why nothing is saved: the history was written by a newer release (after a rollback), left untouched.
        self._newer: str | None = None

    def load(self) -> UsageGraph:
        try:
            self._take_marker(None)
            seen = self._stamps()  # before the read: a write in between makes the next sync read again
            graph, self._at = load_history(self.path)  # an unreadable file is moved aside to usage.json.corrupt
            if self._at is not None and self._at.torn:
                self._torn_warned = (self._at.journal, self._at.offset)
            self._seen = seen
            return graph
        except NewerFormat as exc:
            self._newer = str(exc)
            logger.warning(
                "optimizer: usage history %s %s: left as it is; this gateway ranks without it and saves nothing to "
                "it until it is upgraded (or the file is removed)",
                self.path,
                exc,
            )
            return UsageGraph()
        except Exception as exc:  # e.g. the corrupt file could not be moved aside: start empty all the same
            logger.warning("optimizer: usage history %s not loaded (%s); starting with none", self.path, exc)
            return UsageGraph()

    def save(self, graph: UsageGraph) -> None:
        if self._newer is not None:
            return  # a newer release's history is not overwritten (`load` said so once)
        if not graph.has_new and self._seen is not None and self._stamps() == self._seen:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(lock_path(self.path), timeout=LOCK_WAIT):
            self._take_marker(graph)
            self._sync(graph)
            self._seen = self._stamps()

    def clear(self) -> bool:
        """Delete the history and mark the clear, so running gateways drop what they hold instead of writing
        it back (`vmcp index usage --clear`); whether there was a history file. OSError when the directory
        cannot be written, or its lock not had within `LOCK_WAIT` (`LockTimeout`, naming who holds it)."""
        with exclusive(lock_path(self.path), timeout=LOCK_WAIT):
            existed = self.path.exists() or self.journal.exists()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            # A new token each time: two clears within a clock tick are still two changes.
            write_atomically(self.marker, json.dumps({"cleared_at": stamp, "token": uuid.uuid4().hex}) + "\n")
            self.path.unlink(missing_ok=True)
            self.journal.unlink(missing_ok=True)
        return existed

    # -- one sync, under the history's lock --------------------------------------------------------------

    def _sync(self, graph: UsageGraph) -> None:
        """Add `graph`'s new counts to the history and rank with the whole: a journal line and the lines others
        added since the last look, or a compaction; everything read again only when the snapshot changed."""
        new = graph.new_counts()
        adding = bool(new[0]) or bool(new[1])
        tail = self._journal_tail()
        kept: Kept | None = None
        includes_new = False
        if tail is None:
            kept, at, includes_new = self._read_kept(graph)
            others: Kept = ({}, {})
        else:
            others, at = tail
        line = _journal_line(new) if adding else ""
        if adding and _must_compact(at, len(line.encode())):
            if kept is None:
                kept, _ = _read_counts(self.path)
            if not includes_new:
                add_counts(*kept, *new)
            whole, self._at = self._compact(kept)
            graph.replace(whole, new)
            return
        if adding:
            at = self._append(at, line)
        self._at = at
        if kept is not None:
            if adding:
                add_counts(*kept, *new)
            graph.replace(UsageGraph.holding(kept), new)
        else:
            graph.absorb(others, new)

    def _journal_tail(self) -> tuple[Kept, _Position] | None:
        """The journal lines added since the last look, when the snapshot is the one last seen; None when it
        is not (or the journal was replaced): the history must be read whole."""
        at = self._at
        if at is None or _stamp(self.path) != at.snapshot:
            return None
        read = _read_journal(self.journal, at.generation, at.offset if at.journal is not None else 0, at.journal)
        if read is None:
            return None
        counts, after = read
        position = _Position(at.snapshot, at.generation, at.snapshot_size, after.journal, after.offset)
        if after.torn:
            self._cut_torn(position)
        return counts, position

    def _read_kept(self, graph: UsageGraph) -> tuple[Kept, _Position, bool]:
        """The history as the files hold it, and whether it already holds `graph`'s new counts: an unreadable
        snapshot is moved aside and replaced by everything this gateway knows."""
        try:
            counts, at = _read_counts(self.path)
        except (OSError, ValueError) as exc:
            aside = keep_aside(self.path, KEPT_ASIDE)
            logger.warning("optimizer usage history %s is unreadable (%s); moved to %s", self.path, exc, aside)
            everything = bounded(graph.to_json())
            return parse_counts(everything), _Position(None, None, 0), True
        if at.torn:
            self._cut_torn(at)
        return counts, at, False

    def _cut_torn(self, at: _Position) -> None:
        """Cut a torn last journal line (its writer died mid-write: every writer holds the lock we hold), so the
        next line is not glued to it; warned once."""
        if self._torn_warned != (at.journal, at.offset):
            logger.warning(
                "optimizer: usage history journal %s ends in an incomplete line (a gateway stopped mid-write?); "
                "skipped: those counts are lost",
                self.journal,
            )
        self._torn_warned = None
        os.truncate(self.journal, at.offset)

    def _append(self, at: _Position, line: str) -> _Position:
        """`line` appended to the journal (a new journal naming the snapshot when there is none of it), synced."""
        data = line.encode()
        if at.journal is None:
            header = json.dumps({"usage_journal": JOURNAL_VERSION, "snapshot": at.generation}, separators=_COMPACT)
            data = (header + "\n").encode() + data
            fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        else:
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND)
        try:
            # Whole and synced, or cut off: a part of a line (a full disk) would run into the next sync's line, and
            # a line not synced would be written again by the next sync (its counts counted twice). On OSError the
            # counts stay new, for the next sync.
            append_whole(fd, data, os.fstat(fd).st_size, sync=True)
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if at.journal is None:
            fsync_directory(self.journal.parent)
        return _Position(at.snapshot, at.generation, at.snapshot_size, info.st_ino, info.st_size)

    def _compact(self, counts: Kept) -> tuple[UsageGraph, _Position]:
        """`counts` written as the new snapshot (within the bounds), then the journal it holds removed: a crash in
        between leaves a journal naming the old snapshot, which is ignored."""
        data = bounded({"version": FORMAT_VERSION, "tasks": counts[0], "together": counts[1]})
        body = list(_together_lines(data["together"]))
        # A small history, rewritten at every sync, has no journal to name it: it is written as it always was.
        generation = uuid.uuid4().hex if sum(map(len, body)) >= SMALL_HISTORY else None
        write_atomically(self.path, chain([_head_line(data, generation)], body, ["}}\n"]))
        self.journal.unlink(missing_ok=True)
        info = self.path.stat()
        at = _Position((info.st_ino, info.st_size, info.st_mtime_ns), generation, info.st_size)
        if data["tasks"] is counts[0]:  # within the bounds: the counts as they are
            return UsageGraph.holding(counts), at
        return UsageGraph.holding(parse_counts(data)), at

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

    def _stamps(self) -> tuple[_Stamp, _Stamp, _Stamp]:
        return _stamp(self.path), _stamp(self.journal), _stamp(self.marker)


# A file's identity and version as `stat` gives them (inode, size, mtime); None when there is no file.
_Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> _Stamp:
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def _must_compact(at: _Position, adding: int) -> bool:
    """Whether this sync rewrites the snapshot rather than appending `adding` bytes to the journal."""
    if at.generation is None or at.snapshot_size < SMALL_HISTORY:
        return True  # no snapshot of this layout yet, or one that costs nothing to rewrite
    return at.offset + adding > JOURNAL_RATIO * at.snapshot_size


# -- reading ---------------------------------------------------------------------------------------------


def read_history(path: Path) -> tuple[UsageGraph, _Position]:
    """The history at `path` and its journal, touching nothing: OSError or ValueError when the snapshot cannot
    be read. A torn last journal line is skipped with a warning."""
    counts, at = _read_counts(path)
    if at.torn:
        logger.warning(
            "optimizer: usage history journal %s ends in an incomplete line (a gateway stopped or is writing); skipped",
            journal_path(path),
        )
    return UsageGraph.holding(counts), at


def load_history(path: Path) -> tuple[UsageGraph, _Position | None]:
    """`read_history`, except that an unreadable snapshot is kept aside (`<name>.corrupt-…`, never overwritten
    by the next save) and the history starts empty."""
    remove_dead_saves(path)
    try:
        return read_history(path)
    except NewerFormat:
        raise  # not damage: left where it is (`FileUsageHistory.load`)
    except (OSError, ValueError) as exc:
        aside = keep_aside(path, KEPT_ASIDE)
        logger.warning("optimizer usage history %s is unreadable (%s); moved to %s, starting empty", path, exc, aside)
        return UsageGraph(), None


def _read_counts(path: Path) -> tuple[Kept, _Position]:
    """The snapshot's counts with its journal's added, and how far they were read."""
    try:
        with path.open(encoding="utf-8") as file:
            info = os.fstat(file.fileno())
            data = _parse_snapshot(file)
    except FileNotFoundError:
        return ({}, {}), _Position(None, None, 0)
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc}") from None
    kept = saved_counts(data)  # validated as the earlier layout was
    generation = data.get("generation") if isinstance(data.get("generation"), str) else None
    at = _Position((info.st_ino, info.st_size, info.st_mtime_ns), generation, info.st_size)
    read = _read_journal(journal_path(path), generation, 0, None) if generation is not None else None
    if read is None:
        return kept, at
    more, after = read
    add_counts(*kept, *more)
    return kept, _Position(at.snapshot, generation, at.snapshot_size, after.journal, after.offset, after.torn)


def _parse_snapshot(file: TextIO) -> Any:
    """The snapshot's JSON. Ours read and parsed a tool a line (a 20 MB `json.loads` holds the GIL, and so the event
    loop, for hundreds of milliseconds); any other text as a whole, as the earlier layout is."""
    head = file.readline()
    if head.startswith('{"version":') and head.endswith(',"together":{\n'):
        try:
            data = _parse_lines(head, file)
        except (json.JSONDecodeError, RecursionError, AttributeError, TypeError):
            data = None
        if data is not None:
            return data
    file.seek(0)  # not our layout after all: the whole text decides
    text = file.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        # Arrays or objects nested thousands deep (a damaged file): unreadable like any other, so it is kept
        # aside; escaping as a RecursionError it failed every save and showed `vmcp index usage` a traceback.
        raise ValueError("not a usage history: JSON nested too deeply") from None


def _parse_lines(head: str, file: TextIO) -> Any:
    """The snapshot in our layout after its first line, `head`: a tool's companions a line, then `}}` ending the
    file; None when the lines end otherwise."""
    data = json.loads(head[:-1] + "}}")
    together = data["together"]
    for line in file:
        if line == "}}\n":
            return data if file.read(1) == "" else None
        together.update(json.loads("{" + line.removesuffix("\n").removesuffix(",") + "}"))
    return None


def _read_journal(
    journal: Path, generation: str | None, start: int, inode: int | None
) -> tuple[Kept, _Position] | None:
    """The counts of the journal's whole lines from `start` on (0: from its header, which must name
    `generation`), and where they end. None when the journal known as `inode` was replaced or cut; a missing
    journal, or one of another snapshot, is an empty one (its `journal` None)."""
    empty: Kept = ({}, {})
    none = empty, _Position(None, generation, 0)
    try:
        with journal.open("rb") as file:
            info = os.fstat(file.fileno())
            if inode is not None and (info.st_ino != inode or info.st_size < start):
                return None
            file.seek(start)
            data = file.read()
    except FileNotFoundError:
        return None if inode is not None else none
    whole_end = data.rfind(b"\n") + 1
    lines = data[:whole_end].split(b"\n")[:-1]
    if start == 0:
        if not lines or not _names(lines[0], generation):
            return none  # another snapshot's, or cut in its header: ignored (a new one replaces it)
        lines = lines[1:]
    tasks: dict[str, int] = {}
    together: dict[str, dict[str, int]] = {}
    for line in lines:
        try:
            add_counts(tasks, together, *parse_counts(json.loads(line)))
        except (ValueError, RecursionError, AttributeError) as exc:  # damaged on disk: that sync's counts only
            logger.warning("optimizer: usage history journal %s: a line not read (%s); skipped", journal, exc)
    at = _Position(None, generation, 0, info.st_ino, start + whole_end, whole_end < len(data))
    return (tasks, together), at


def _names(header: bytes, generation: str | None) -> bool:
    """Whether a journal's first line names the snapshot `generation`."""
    try:
        data = json.loads(header)
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(data, dict) and data.get("usage_journal") == JOURNAL_VERSION and data.get("snapshot") == generation
    )


# -- writing ---------------------------------------------------------------------------------------------


def _journal_line(counts: Counts) -> str:
    tasks, together = counts
    return json.dumps({"tasks": tasks, "together": together}, separators=_COMPACT) + "\n"


def _head_line(data: dict[str, Any], generation: str | None) -> str:
    """The snapshot's first line: the JSON object the earlier layout was, up to its companions."""
    head = {"version": data["version"], "generation": generation, "tasks": data["tasks"]}
    if generation is None:
        del head["generation"]
    return json.dumps(head, separators=_COMPACT)[:-1] + ',"together":{\n'


def _together_lines(together: dict[str, Any]) -> Iterator[str]:
    """The snapshot's companions, one tool a line (each serialised on its own: the GIL is given back between)."""
    last = len(together) - 1
    for number, (tool, counts) in enumerate(together.items()):
        yield json.dumps(tool) + ":" + _encode_compact(counts) + (",\n" if number < last else "\n")


def journal_path(path: Path) -> Path:
    """Where the changes since the snapshot at `path` are appended."""
    return path.with_name(f"{path.name}.journal")


def cleared_marker(path: Path) -> Path:
    """Where `vmcp index usage --clear` marks that it deleted the history at `path`."""
    return path.with_name(f".{path.name}.cleared")


def _read_marker(marker: Path) -> str | None:
    try:
        return marker.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
