"""Which exports of a model cache pruning removes (optimizer/onnx_export.py, `prune_earlier_exports`), when
processes, and hosts of two kinds of CPU, share the cache (an NFS home, a volume two hosts mount).

An export's name holds a hash of the model's files, the recipe, onnxruntime's version and the CPU kind's int8
weight codes (`model_hash`), so such a cache holds one current export per kind. Pruning keeps every current name
(a host that removed the other kind's would have that kind export again, minutes of CPU, at each of its
starts) and removes the model's other exports, unless a live process may open their files: a gateway of an
earlier version still serving from one, its bulk child about to load the graph it names, a host on NFS.

Each process that serves from an export holds a shared flock on the export's `.in-use` file for its whole life
(the kernel releases it when the process ends, killed too; Linux's NFS client takes it on the server, so another
host's pruning sees it). Pruning takes the exclusive lock without waiting, skips the export when it cannot, and
renames the export aside while it holds the lock: a process that opens the export later finds it gone and
exports again, never half a directory. A process that holds no lock (a version from before the mark) is not
seen.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

from vmcp_opt.file_writes import same_file

log = logging.getLogger(__name__)

IN_USE_FILE = ".in-use"
# The export's metadata (optimizer/onnx_export.py writes it): the model directory it was made from.
METADATA_FILE = "export.json"
# Seconds a process waits for the shared lock: pruning holds the exclusive one only for a rename, so a longer
# wait means a pruner stopped mid-rename (Ctrl-Z, a hung mount); the process then serves without the mark.
HOLD_WAIT = 10.0
_POLL_SECONDS = 0.05

# Each export this process uses -> the descriptor whose shared lock marks it, open until the process ends.
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


def hold_export(directory: Path) -> bool:
    """Mark the export in `directory` as used by this process until it ends. False when the export is gone (removed
    as this ran): the caller exports it again. A mark that cannot be made (a cache this process cannot write) is a
    warning, and True: the files serve without it."""
    marker = directory / IN_USE_FILE
    with _held_guard:
        held = _held.get(directory)
        if held is not None and same_file(held, marker):
            return True
        if held is not None:  # the export was made again (`reexport`): mark the new one
            os.close(_held.pop(directory))
        try:
            descriptor = os.open(marker, os.O_RDONLY | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.info("cannot mark %s as in use (%s): another process's pruning may remove it", directory, exc)
            return directory.is_dir()
        if not _lock_shared(descriptor):
            os.close(descriptor)
            log.warning("%s stayed locked for %.0f s: serving it without marking it in use", marker, HOLD_WAIT)
            return True
        if not same_file(descriptor, marker):  # renamed aside by a pruner before the lock was had
            os.close(descriptor)
            return False
        _held[directory] = descriptor
        return True


def prune_exports(cache: Path, slug: str, model_dir: Path, current: set[str], stale_staging: float) -> list[Path]:
    """Remove the exports in `cache` made from `model_dir` whose names are not in `current` (those a live process
    uses stay: logged) and `slug`'s staging directories older than `stale_staging` seconds (exports killed, or
    a removal's leftovers); returns what was removed. Another model's export under the same slug stays."""
    exported = re.compile(rf"{re.escape(slug)}-[0-9a-f]{{16}}")
    staging = re.compile(rf"\.{re.escape(slug)}-[0-9a-f]{{16}}-.+")
    removed = []
    for path in cache.iterdir():
        if path.name in current or not path.is_dir():
            continue
        if exported.fullmatch(path.name) and _exported_from(path) == model_dir.resolve():
            if remove_unless_in_use(path):
                removed.append(path)
            else:
                log.info("kept %s, an earlier ONNX export: a running process uses it", path)
        elif staging.fullmatch(path.name) and time.time() - path.stat().st_mtime > stale_staging:
            shutil.rmtree(path)
            removed.append(path)
    return removed


def remove_unless_in_use(directory: Path) -> bool:
    """Remove the export in `directory` unless a process holds its in-use mark; True when removed."""
    try:
        descriptor = os.open(directory / IN_USE_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # NFS's exclusive lock wants it
    except FileNotFoundError:  # removed meanwhile by another pruner
        return False
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # A staging name: what a failed removal leaves goes with the next prune's old staging directories.
        aside = directory.with_name(f".{directory.name}-pruned-{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(directory, aside)
    finally:
        os.close(descriptor)
    shutil.rmtree(aside)
    return True


def _exported_from(directory: Path) -> Path | None:
    """The model directory an export was made from, by its metadata (None when unreadable)."""
    try:
        return Path(json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))["model_dir"]).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _lock_shared(descriptor: int) -> bool:
    deadline = time.monotonic() + HOLD_WAIT
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_SECONDS)
