"""The tool index's vectors on disk: `index_dir/<model-slug>/vectors.npz`, keyed by each tool's content hash.

A restart with unchanged tools embeds nothing and a changed tool re-embeds alone. The vectors of tools that
left the catalogue are kept too (the newest `optimizer.keep_removed`, in memory and in the file), so a
backend that restarts or recovers is not embedded again. An unreadable or foreign file is rebuilt, never
fatal; a row that is not a finite unit vector (bit rot, a bad copy) is dropped on load and re-embedded, since
one NaN would poison every ranking's score scaling, and is never written.

The file names the model that made it: its id, and a digest of its files and prefixes (`model_digest`, with
the files' sizes and times, `model_files`, so that an unchanged model is not hashed again). A model replaced in
place keeps its id (a local directory's is its path): its vectors are then another model's, and every tool is
embedded again. A file from before the digest was written is taken as the model's own.

It does not name the encoder, the precision or the ONNX export recipe, on purpose: each served graph is held to
cosine floors against the model's fp32 vectors at export (optimizer/onnx_export.py; >= 0.995 for int8, within
0.13 nDCG@10 on every eval set), so one set of vectors serves them all, and an upgrade or a precision change does
not re-embed 10k tools (~100 s here). Eval's cache, which compares graphs, does name them (eval/embed.py).

A file whose content is not such vectors (truncated, another model's, not an npz) is kept aside as
`vectors.npz.corrupt-<UTC time>`, as the usage history keeps its own (usage.py), and said once: the cache is
rebuilt, and the operator can still see what was there. Only the newest `KEPT_ASIDE` are kept. A file that
cannot be read at all (permissions, a directory in its place) stays where it is: moving it would hide the
cause, and the next save says what is wrong with the place.

The index's files hold tool descriptions and vectors, not secrets: `vectors.npz` is created like
`catalogue.json`, `usage.json` and the lock file, 0666 less the process's umask (0644 under the usual 022),
so an operator's `vmcp index build` and a gateway running as another user can share an index_dir.

Writes are paced: the whole file (11-15 MB at a few thousand tools and the kept vectors) is written, fsynced
(then its directory: file_lock.replace_durably), at most once per `SAVE_INTERVAL` by one store. A save that
comes sooner is kept pending and written by the first save past the interval, by a timer at its end, or by
`close` (the gateway's shutdown): a backend that announces new tools every second costs one write per interval,
not one a second, and a clean stop loses nothing embedded, nor does a stop while this process's update holds
the lock (it saves as it embeds: the pending part is written without waiting for that update's end). A store's
first save writes at once, so `vmcp index build` (one update) has its file when it
returns, and so does a gateway's first embedding. Pending vectors are merged with what another process saved
meanwhile (its catalogue joins the retired entries), as an update merges them, so no replica's are lost.
The environment variable `VMCP_VECTORS_SAVE_INTERVAL` (seconds, 0: every save writes) overrides the interval;
it is there for tests, not for tuning. A write that died (the process killed mid-write) leaves its temporary
file, removed by the next store that takes the lock (`remove_dead_writers`).

Past ~450 lines on purpose: the file's reading, its pacing and the lock they share are one state machine.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vmcp_opt.logs import ThrottledLog
from vmcp_opt.optimizer.file_lock import (
    STALE_WRITE_SECONDS,
    LockTimeout,
    exclusive,
    holder,
    keep_aside,
    remove_dead_writers,
    replace_durably,
    temporary_name,
)
from vmcp_opt.optimizer.model_registry import ModelSpec, model_digest, model_files

log = logging.getLogger(__name__)

VECTORS_FILE = "vectors.npz"
LOCK_FILE = ".vectors.lock"
# What a write goes through before it replaces `vectors.npz` (`_write`): `.vectors-<host>-<pid>-<nonce>-<hex>.tmp`.
TMP_PREFIX, TMP_SUFFIX = ".vectors-", ".tmp"
# Seconds after which a temporary file is a leftover whoever wrote it (file_lock.py says why).
STALE_TMP_SECONDS = STALE_WRITE_SECONDS
# How far a stored vector's L2 norm may be from 1 (float32 rounding is ~1e-6; a flipped bit is far more).
NORM_TOLERANCE = 1e-3
# Seconds a waiter for the lock says so at info level only: another replica's update of a small catalogue
# takes less. Past it, a warning names who holds the lock (seen by `vmcp index build`, which shows warnings).
LOCK_NOTICE_AFTER = 5.0
# Unusable vector files kept aside (`vectors.npz.corrupt-<time>`), the oldest removed past this.
KEPT_ASIDE = 3
# Seconds between two writes of the file by one store. 30 s, as `optimizer.usage_sync_interval`: a backend
# churning its tools costs at most two 15 MB writes a minute (an audit measured ~200 MB a minute unpaced),
# while a crash (a clean stop writes at once) loses at most 30 s of embeddings, which the next start makes
# again for the tools still listed, and a replica sees another's new vectors within as long.
SAVE_INTERVAL = 30.0
SAVE_INTERVAL_ENV = "VMCP_VECTORS_SAVE_INTERVAL"
# Seconds `close` waits for the lock before writing without it: shutdown must not wait for another replica's
# minutes-long embedding (the usage history's saves wait as long).
CLOSE_LOCK_WAIT = 5.0
# A place that refuses every write (a read-only index_dir, as under readOnlyRootFilesystem; a file in its place; a
# full disk) is tried again at each interval's end, which finds a freed disk, but is said once per reason in this
# many seconds: not two warnings every 30 s for as long as the gateway runs.
REPEAT_WARNING_AFTER = 600.0


def save_interval() -> float:
    """`SAVE_INTERVAL`, or the seconds `VMCP_VECTORS_SAVE_INTERVAL` gives (a bad value is said and ignored)."""
    said = os.environ.get(SAVE_INTERVAL_ENV)
    if said is None:
        return SAVE_INTERVAL
    try:
        seconds = float(said)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and seconds >= 0):
        log.warning("%s=%r is not a number of seconds; using %g", SAVE_INTERVAL_ENV, said, SAVE_INTERVAL)
        return SAVE_INTERVAL
    return seconds


def unusable_rows(vectors: np.ndarray) -> np.ndarray:
    """Which rows are not finite unit vectors: the index scores normalised vectors only."""
    if not len(vectors):
        return np.zeros(0, dtype=bool)
    with np.errstate(all="ignore"):
        norms = np.linalg.norm(vectors, axis=1)
    usable: np.ndarray = np.isfinite(vectors).all(axis=1) & (np.abs(norms - 1.0) <= NORM_TOLERANCE)
    return ~usable


@dataclass(frozen=True)
class VectorCache:
    """Vectors by content hash, `matrix[rows[hash]]`, plus those of tools that left the catalogue
    (`retired`, oldest first), so a backend that comes back is not re-embedded."""

    rows: dict[str, int] = field(default_factory=dict)
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    # What owns `matrix`'s memory when it is a view of FAISS storage: kept alive as long as the cache is.
    owner: Any = None
    retired: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)

    def stack(self, hashes: Sequence[str], dims: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors aligned with `hashes`, which rows were found); missing rows are zero."""
        where = np.fromiter((self.rows.get(h, -1) for h in hashes), dtype=np.int64, count=len(hashes))
        found = where >= 0
        out = np.zeros((len(hashes), dims), dtype=np.float32)
        if found.any():
            out[found] = self.matrix[where[found]]
        for i in np.flatnonzero(~found) if self.retired else ():
            vector = self.retired.get(hashes[int(i)])
            if vector is not None:
                out[i], found[i] = vector, True
        return out, found

    def retire(self, keep: set[str], limit: int) -> OrderedDict[str, np.ndarray]:
        """The retired entries after the catalogue becomes `keep`: rows not in it join (newest last), entries
        back in it leave, and only the newest `limit` stay."""
        retired = OrderedDict((h, vector) for h, vector in self.retired.items() if h not in keep)
        for digest, row in self.rows.items():
            if digest not in keep:
                retired.pop(digest, None)
                retired[digest] = self.matrix[row].copy()
        while len(retired) > limit:
            retired.popitem(last=False)
        return retired


class VectorStore:
    """One model's `vectors.npz`, and the cache read from it (once, lazily) or last saved to it."""

    def __init__(
        self,
        directory: Path,
        model: ModelSpec,
        lock_wait: float | None = None,
        *,
        keep_removed: int | None = None,
        interval: float | None = None,
    ) -> None:
        self.directory = directory
        self.model = model
        # Seconds an update waits for another process's (None: as long as it takes). A holder that is alive
        # but stuck (stopped, on a hung mount) must not keep this process's vectors away for ever; past the
        # wait it updates without the lock, as on a read-only index_dir (each save replaces the file whole).
        self.lock_wait = lock_wait
        # Retired vectors kept when pending ones are merged with another process's (None: all).
        self.keep_removed = keep_removed
        # Seconds between two writes (module docstring); 0: every save writes.
        self.interval = save_interval() if interval is None else interval
        # Why the last write did not reach the file; None when it did, or had nothing to write.
        self.unsaved: str | None = None
        self._cache: VectorCache | None = None
        # The file as it was when `_cache` was read from it or written to it: another process's save since
        # then changes it.
        self._stamp: tuple[int, int, int] | None = None
        # The file holds exactly `_cache`'s entries (read whole, or written): a save of the same ones is skipped.
        self._in_sync = False
        # `_cache` holds vectors the file does not: a paced save not written yet (or whose write failed).
        self._pending = False
        self._written_at: float | None = None  # time.monotonic() of the last write (tried)
        self._timer: threading.Timer | None = None
        self._closed = False
        # `updating` blocks of this process inside the file lock (under `_guard`): then `flush` writes at once.
        self._holding = 0
        self._swept = False  # the leftovers of dead writers were removed (`_remove_leftovers`), once a store
        self._tmps: set[Path] = set()  # temporary files this store created and has not removed (`_write`)
        self._refused = ThrottledLog(log, interval=REPEAT_WARNING_AFTER)  # lock and write failures, per reason
        self._failing = False  # the last write failed: the next that succeeds says so
        # (`model_files`, `model_digest`) of the model as this store last read or computed them (`_model_stamp`).
        self._model: tuple[str, str] | None = None
        # The state above, between the updating thread, the timer's and shutdown's. Never held while waiting
        # for the file lock (which the updating thread holds while it calls `save`).
        self._guard = threading.RLock()

    @property
    def path(self) -> Path:
        return self.directory / VECTORS_FILE

    def cache(self) -> VectorCache:
        with self._guard:
            if self._cache is None:
                self._cache, self._stamp = self._load(), self._file_stamp()
            return self._cache

    @contextmanager
    def updating(self, lock_wait: float | None = None) -> Iterator[VectorCache]:
        """The cache as the file holds it now, under a lock every process using this directory takes
        (replicas on a shared index_dir) until the block ends, after its `save`: the first to come embeds
        what is new and saves it; the others wait, then read what it saved and embed nothing again. Vectors
        not written yet (a paced save) stay, with those the file has too. `lock_wait`: instead of the store's."""
        with ExitStack() as held:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._lock(held, self.lock_wait if lock_wait is None else lock_wait)
            except OSError as exc:  # a read-only index_dir, a stuck holder: update alone (`save` warns too)
                self._refused.warning(
                    f"lock {_reason(exc)}", "index: cannot lock %s (%s); updating without the lock", self.directory, exc
                )
            else:
                with self._guard:
                    self._holding += 1
                # Runs before the lock's release (an ExitStack unwinds last in, first out): `flush` never writes
                # as the holder once another process may hold the lock.
                held.callback(self._let_go)
                self._remove_leftovers()
            with self._guard:
                self._catch_up()
            yield self.cache()

    def _let_go(self) -> None:
        with self._guard:
            self._holding -= 1

    def _remove_leftovers(self) -> None:
        """The temporary files of writers that died mid-write (killed, or leaving by `os._exit` while a save ran),
        once a store, under the lock every writer takes (`remove_dead_writers` says which are removed)."""
        if self._swept:
            return
        self._swept = True
        for tmp in remove_dead_writers(self.directory, TMP_PREFIX, TMP_SUFFIX, STALE_TMP_SECONDS):
            log.info("index: removed %s, left by a write that did not finish", tmp)

    def _remove_own_leftovers(self) -> None:
        """The temporary files this store created, still there, on shutdown (under `_guard`: none is being written).
        Those only: under tini every pod's gateway has one pid, and a shared index_dir holds other pods' files."""
        for tmp in list(self._tmps):
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
                self._tmps.discard(tmp)

    def _catch_up(self) -> None:
        """Another process saved since we read or wrote the file: read its vectors, merged with ours when
        ours are not all on disk (dropping them would embed them again, or lose them)."""
        if self._cache is None or self._file_stamp() == self._stamp:
            return
        if not self._pending:
            self._cache = None  # read lazily by `cache`
            return
        mine = self._cache
        theirs, self._stamp = self._load(), self._file_stamp()
        self._cache, self._in_sync = _merged(mine, theirs, self.keep_removed), False
        log.debug("index: merged %d vectors another process saved into %d pending", _count(theirs), _count(mine))

    def _lock(self, held: ExitStack, wait: float | None) -> None:
        """Take the lock into `held`: quietly for `LOCK_NOTICE_AFTER`, then saying who is waited for; a
        `LockTimeout` past `wait`."""
        path = self.directory / LOCK_FILE
        first = LOCK_NOTICE_AFTER if wait is None else min(wait, LOCK_NOTICE_AFTER)
        try:
            held.enter_context(exclusive(path, on_wait=self._log_wait, timeout=first))
            return
        except LockTimeout as exc:
            if wait is not None and wait <= first:
                raise
            more = "as long as it takes" if wait is None else f"up to {wait - first:g} s more"
            log.warning("index: %s; waiting %s for its vectors (%s)", exc, more, self.directory)
        try:
            held.enter_context(exclusive(path, timeout=None if wait is None else wait - first))
        except LockTimeout:  # said with the whole wait, not the part after the notice
            raise LockTimeout(f"{holder(path)} has held {path} for over {wait:g} s") from None

    def _log_wait(self, holder: str) -> None:
        log.info("index: %s is updating %s; waiting for its vectors", holder, self.directory)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def save(self, cache: VectorCache) -> None:
        """Keep `cache` and write it: the catalogue's vectors, then the retired ones (oldest first; the
        file's `retired` says how many). Not written when the file already holds the same entries (vectors
        are keyed by content, so the same hashes are the same vectors), nor any row that is not a finite unit
        vector; written later when the last write is under `interval` old (module docstring). A failed write
        is logged; it is tried again by the next save, or at the interval's end."""
        with self._guard:
            if self._in_sync and self._cache is not None and _same_entries(self._cache, cache):
                self._cache, self.unsaved = cache, None
                return
            self._cache, self._in_sync, self._pending = cache, False, True
            wait = self._wait_left()
            if wait > 0 and not self._closed:
                self._flush_in(wait)
                log.debug("index: %d vectors pending, written in %.1f s at the latest", _count(cache), wait)
                return
            self._write_pending()

    def flush(self, lock_wait: float | None = None) -> None:
        """Write the pending vectors now, under the lock (merged with what another process saved meanwhile)."""
        with self._guard:
            if not self._pending:
                return
            if self._holding:
                # An update of this process holds the file lock (it is embedding, and saves as it goes): nothing
                # another process wrote can be merged meanwhile, and waiting for the lock would wait for the
                # update's end, which a shutdown does not: its vectors so far are written now.
                self._write_pending()
                return
        with self.updating(lock_wait), self._guard:
            if self._pending:
                self._write_pending()

    def close(self) -> None:
        """On shutdown: write what is pending, waiting at most `CLOSE_LOCK_WAIT` for the lock; any later save
        writes at once. Idempotent."""
        with self._guard:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.flush(CLOSE_LOCK_WAIT if self.lock_wait is None else min(CLOSE_LOCK_WAIT, self.lock_wait))
        with self._guard:
            self._remove_own_leftovers()

    def _wait_left(self) -> float:
        if self.interval <= 0 or self._written_at is None:
            return 0.0
        return self._written_at + self.interval - time.monotonic()

    def _flush_in(self, seconds: float) -> None:
        """A timer writes the pending vectors when the interval ends, should no save come by then."""
        if self._timer is not None and self._timer.is_alive():
            return
        self._timer = threading.Timer(seconds, self._flush_on_timer)
        self._timer.name = "index-vectors-saver"
        self._timer.daemon = True  # `close` writes on shutdown; the timer must not hold the process
        self._timer.start()

    def _flush_on_timer(self) -> None:
        try:
            self.flush()
        except Exception:  # the next save or `close` tries again; the thread must not die with a traceback
            log.exception("index: writing the pending vectors to %s failed", self.directory)

    def _write_pending(self) -> None:
        """Write `_cache` (under `_guard`); on a failure it stays pending, tried again at the interval's end."""
        cache = self._cache
        assert cache is not None
        self._written_at = time.monotonic()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        self._timer = None
        self.unsaved = None
        dims = self.model.dimensions
        rows = np.fromiter(cache.rows.values(), dtype=np.int64, count=len(cache.rows))
        current = cache.matrix[rows] if len(rows) else np.zeros((0, dims), dtype=np.float32)
        vectors = np.concatenate([current, *(vector[None, :] for vector in cache.retired.values())])
        hashes = np.array([*cache.rows, *cache.retired], dtype="S64")
        retired_count = len(cache.retired)
        bad = unusable_rows(vectors)
        if bad.any():
            log.warning("index: %d vectors are not finite unit vectors; not saving them", int(bad.sum()))
            retired_count -= int(bad[len(current) :].sum())
            vectors, hashes = vectors[~bad], hashes[~bad]
        try:
            self._write(hashes, vectors, retired_count)
        except OSError as exc:
            where = exc.filename2 or exc.filename  # a failed rename names its target second
            self.unsaved = f"{exc.strerror or exc}" + (f": {where}" if where else "")
            self._refused.warning(
                f"save {_reason(exc)}", "could not save the index cache to %s: %s", self.directory, exc
            )
            self._failing = True
            if self.interval > 0 and not self._closed:
                log.debug(
                    "index: vectors not saved to %s (%s); trying again in %g s", self.directory, exc, self.interval
                )
                self._flush_in(self.interval)
            return
        if self._failing:
            self._failing = False
            log.info("index: vectors saved to %s again", self.path)
        self._stamp, self._in_sync, self._pending = self._file_stamp(), not bad.any(), False
        log.debug("index: wrote %d vectors to %s", len(hashes), self.path)

    def _write(self, hashes: np.ndarray, vectors: np.ndarray, retired_count: int) -> None:
        """The file replaced whole, through a temporary one: a reader sees the old file or the new one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # Not mkstemp, which creates 0600 whatever the umask: the index's files share one mode (above).
        tmp = self.directory / temporary_name(TMP_PREFIX, TMP_SUFFIX)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._tmps.add(tmp)
        try:
            files, digest = self._model_stamp()
            with os.fdopen(fd, "wb") as file:
                np.savez(
                    file,
                    model=np.array(self.model.id),
                    model_files=np.array(files),
                    model_digest=np.array(digest),
                    hashes=hashes,
                    vectors=vectors,
                    retired=np.array(retired_count),
                )
                file.flush()
                os.fsync(file.fileno())
            replace_durably(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # should this fail, `close` tries again
            self._tmps.discard(tmp)
            raise
        self._tmps.discard(tmp)

    def _model_stamp(self) -> tuple[str, str]:
        """(`model_files`, `model_digest`) of the model now: the digest read or computed last while the files are
        as they were then (hashing the model's bytes is ~0.4 s), else computed again."""
        files = model_files(self.model)
        if self._model is None or self._model[0] != files:
            self._model = (files, model_digest(self.model))
        return self._model

    def _same_model(self, built_by: tuple[str, str]) -> bool:
        """Whether a file whose model was `built_by` holds this model's vectors: its files as they are now, or
        their bytes (copied, reinstalled: new times, same model)."""
        if built_by[0] == model_files(self.model):
            self._model = built_by
            return True
        return self._model_stamp()[1] == built_by[1]

    def _keep_aside(self, problem: Exception) -> None:
        path = self.path
        try:
            aside = keep_aside(path, KEPT_ASIDE)
        except OSError as exc:  # another replica moved it first, or a read-only index_dir: it is still unused
            log.warning("index cache %s unusable, ignored (%s); could not keep it aside: %s", path, problem, exc)
            return
        log.warning(
            "index cache %s unusable (%s); kept aside as %s: its tools are embedded again at the next build",
            path,
            problem,
            aside,
        )

    def _load(self) -> VectorCache:
        path = self.path
        self._in_sync = False
        if not path.exists():
            return VectorCache()
        try:
            with np.load(path, allow_pickle=False) as data:
                model = str(data["model"])
                hashes = [h.decode("ascii") for h in data["hashes"]]
                stored = data["vectors"]
                if stored.dtype != np.float32:
                    raise ValueError(f"vectors of dtype {stored.dtype}, not float32")
                vectors = np.ascontiguousarray(stored)
                # Written since removed tools' vectors are kept; older files hold the catalogue only.
                retired_count = int(data["retired"]) if "retired" in data else 0
                # Written since a model changed in place is told apart; an older file is taken as this model's.
                built_by = (str(data["model_files"]), str(data["model_digest"])) if "model_digest" in data else None
            if model != self.model.id:
                raise ValueError(f"built by model {model!r}, not {self.model.id!r}")
            if not 0 <= retired_count <= len(hashes):
                raise ValueError(f"{retired_count} retired vectors of {len(hashes)}")
            if vectors.shape != (len(hashes), self.model.dimensions):
                raise ValueError(f"vectors {vectors.shape} do not match {len(hashes)} hashes x {self.model.dimensions}")
        except OSError as exc:  # cannot be read at all: left in place (the module docstring says why)
            log.warning("index cache %s unreadable, ignored (the next embedding update replaces it): %s", path, exc)
            return VectorCache()
        except Exception as exc:  # any other unusable cache is kept aside and rebuilt, never fatal
            self._keep_aside(_not_pickled(exc))
            return VectorCache()
        if built_by is not None and not self._same_model(built_by):
            # Not kept aside: nothing is wrong with it, and the next save replaces it with this model's vectors.
            log.warning(
                "index cache %s was built by another version of model %r (its files or prefixes changed since); "
                "embedding every tool again",
                path,
                self.model.id,
            )
            return VectorCache()
        current = len(hashes) - retired_count
        bad = unusable_rows(vectors)
        if bad.any():
            # Treated as never embedded: the next update embeds these tools again and saves their new rows.
            log.warning(
                "index cache %s: %d of %d vectors are not finite unit vectors; re-embedding those tools",
                path,
                int(bad.sum()),
                len(hashes),
            )
        retired = OrderedDict((h, vectors[i]) for i, h in enumerate(hashes[current:], start=current) if not bad[i])
        rows = {h: i for i, h in enumerate(hashes[:current]) if not bad[i]}
        self._in_sync = not bad.any()
        return VectorCache(rows, vectors, retired=retired)


def _reason(exc: OSError) -> str:
    """What a failure is, for telling a new one from a repeat: its errno (a timeout on the lock has none)."""
    return str(exc.errno) if exc.errno is not None else type(exc).__name__


def _same_entries(old: VectorCache, new: VectorCache) -> bool:
    """The same catalogue hashes and the same retired ones in the same order: what the file holds."""
    return old.rows.keys() == new.rows.keys() and list(old.retired) == list(new.retired)


def _count(cache: VectorCache) -> int:
    return len(cache.rows) + len(cache.retired)


def _merged(mine: VectorCache, theirs: VectorCache, limit: int | None) -> VectorCache:
    """`mine` with every vector of `theirs` it lacks among its retired ones, as an update that read `theirs`
    would keep them (their catalogue and retired, newest last); only the newest `limit` retired stay."""
    retired = OrderedDict(mine.retired)
    for digest, vector in theirs.retired.items():
        if digest not in mine.rows and digest not in retired:
            retired[digest] = vector
    for digest, row in theirs.rows.items():
        if digest not in mine.rows and digest not in retired:
            retired[digest] = theirs.matrix[row].copy()
    while limit is not None and len(retired) > limit:
        retired.popitem(last=False)
    return VectorCache(mine.rows, mine.matrix, owner=mine.owner, retired=retired)


def _not_pickled(problem: Exception) -> Exception:
    """numpy's word for a file that is no archive of arrays ("contains pickled (object) data. If you trust the file
    you can load it unsafely using `allow_pickle=`…") told an operator to load a damaged or planted file unsafely:
    said plainly instead. The index never holds pickled data."""
    if isinstance(problem, ValueError) and "pickle" in str(problem):
        return ValueError("not an index cache file: not an archive of arrays")
    return problem
