"""Two gateways on one shared index_dir (the README's ReadWriteMany volume) never remove each other's vectors
file being written. Under tini (PID 1) the gateway has the same pid in every pod: a temporary name of the pid
alone let one pod's shutdown unlink another's live `.vectors-<pid>-<hex>.tmp`, whose rename then failed. Names
carry host, pid and a per-process nonce; `close` removes only the names its store created; the sweep at start
tests a pid only on its own host (age alone for another's), and still reads an earlier release's names.

And an update of the catalogue the last update embedded is skipped only while no other update runs: R, then R',
then R again while R' embeds, must not leave R served and `_embedded` saying R'. Real files, real processes
(an exited one's pid), a real `ToolIndex` with the real ONNX embedder held in `encode_documents` by the test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.test_churn_index_follows import HeldEmbedder, tool
from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.embedding import load_embedder
from vmcp_opt.optimizer.file_lock import temporary_name, this_host, writer_tag
from vmcp_opt.optimizer.index import ToolIndex
from vmcp_opt.optimizer.model_registry import resolve_model
from vmcp_opt.optimizer.vector_store import STALE_TMP_SECONDS, VectorCache, VectorStore


def exited_pid() -> int:
    """The pid of a process that ran and exited: its writer is gone."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(child.stdout)


def another_process_tag() -> str:
    code = "from vmcp_opt.optimizer.file_lock import writer_tag; print(writer_tag())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True).stdout.strip()


def unit_cache(dims: int, *hashes: str) -> VectorCache:
    matrix = np.zeros((len(hashes), dims), dtype=np.float32)
    matrix[:, 0] = 1.0
    return VectorCache({h: i for i, h in enumerate(hashes)}, matrix, retired=OrderedDict())


def test_names_carry_host_pid_and_a_nonce_of_this_process() -> None:
    name = temporary_name(".vectors-", ".tmp")
    host, pid, nonce, hex_part = name.removeprefix(".vectors-").removesuffix(".tmp").rsplit("-", 3)
    assert (host, int(pid)) == (this_host(), os.getpid()) and len(hex_part) == 8
    assert writer_tag() == f"{host}-{pid}-{nonce}"
    assert temporary_name(".vectors-", ".tmp") != name  # each write its own file
    other = another_process_tag()
    assert other.startswith(f"{this_host()}-") and other.rsplit("-", 1)[1] != nonce


def test_a_host_name_is_kept_to_file_name_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "pod-a/b c*?[x]" * 20)
    host = this_host()
    assert re.fullmatch(r"[A-Za-z0-9._]{1,64}", host), host


def test_close_and_sweep_keep_other_writers_files_and_remove_dead_ones_of_this_host(tmp_path: Path) -> None:
    model = resolve_model("all-MiniLM-L6-v2")
    dead, live, me = exited_pid(), os.getppid(), os.getpid()
    nonce = writer_tag().rsplit("-", 1)[1]
    other_nonce = "0" * 8 if nonce != "0" * 8 else "1" * 8
    directory = tmp_path / model.slug
    directory.mkdir()
    kept = {
        # Another pod on the shared volume: the same pid as this process (tini), its write under way.
        "other host, my pid": f".vectors-pod_b-{me}-{nonce}-00000001.tmp",
        # Another host's writer whose pid is not running here: it may well run there.
        "other host, pid gone here": f".vectors-pod_b-{dead}-abcdef01-00000002.tmp",
        # This host, this pid, another nonce: not this process's (another pid namespace, a sidecar).
        "my host and pid, other nonce": f".vectors-{this_host()}-{me}-{other_nonce}-00000003.tmp",
        "my host, a live pid": f".vectors-{this_host()}-{live}-abcdef01-00000004.tmp",
        "an earlier release's, live pid": f".vectors-{live}-feedf00d.tmp",
    }
    removed = {
        "my host, pid gone": f".vectors-{this_host()}-{dead}-abcdef01-00000005.tmp",
        "an earlier release's, pid gone": f".vectors-{dead}-0badc0de.tmp",
        "other host, stale": f".vectors-pod_b-{me}-abcdef01-00000006.tmp",
    }
    for name in [*kept.values(), *removed.values()]:
        (directory / name).write_bytes(b"PK\x03\x04 being written")
    stale = time.time() - STALE_TMP_SECONDS - 60
    os.utime(directory / removed["other host, stale"], (stale, stale))

    store = VectorStore(directory, model, interval=0)
    with store.updating():  # the sweep, under the lock
        store.save(unit_cache(model.dimensions, "a" * 64))
    store.save(unit_cache(model.dimensions, "a" * 64, "b" * 64))  # a write outside the lock
    store.close()

    left = {p.name for p in directory.glob(".vectors-*.tmp")}
    assert left == set(kept.values()), sorted(left)
    assert (directory / "vectors.npz").exists()
    assert VectorStore(directory, model).cache().rows.keys() == {"a" * 64, "b" * 64}


def test_close_removes_a_file_its_own_write_could_not_remove(tmp_path: Path) -> None:
    model = resolve_model("all-MiniLM-L6-v2")
    store = VectorStore(tmp_path, model, interval=0)
    (tmp_path / "vectors.npz").mkdir()  # the rename fails: a directory in the file's place
    (tmp_path / "vectors.npz" / "x").write_text("x")
    unlink = Path.unlink
    refused: list[Path] = []

    def refuse_once(self: Path, missing_ok: bool = False) -> None:  # the clean-up after a failed rename fails too
        if self.name.startswith(".vectors-") and not refused:
            refused.append(self)
            raise PermissionError(13, "Permission denied", str(self))
        unlink(self, missing_ok=missing_ok)

    setattr(Path, "unlink", refuse_once)  # noqa: B010
    try:
        store.save(unit_cache(model.dimensions, "a" * 64))
    finally:
        setattr(Path, "unlink", unlink)  # noqa: B010
    assert store.unsaved is not None and refused and refused[0].exists()
    store.close()
    assert not refused[0].exists()


@pytest.fixture(scope="module")
def embedder() -> Iterator[HeldEmbedder]:
    yield HeldEmbedder(load_embedder("all-MiniLM-L6-v2"))


def test_the_unchanged_shortcut_waits_for_an_update_still_embedding(tmp_path: Path, embedder: HeldEmbedder) -> None:
    index = ToolIndex(OptimizerConfig(), tmp_path, embedder=embedder)  # type: ignore[arg-type]
    catalogue = [tool("water", "Water the garden plants"), tool("zap", "Zap the quasar with a plasma beam")]
    grown = [*catalogue, tool("launch_rocket", "Launch a rocket into orbit", backend="big")]
    index.update_keywords(catalogue)
    index.update(catalogue)
    index.update_keywords(grown)
    embedder.started.clear()
    embedder.release.clear()
    embedding = threading.Thread(target=index.update, args=(grown,))  # R' embeds, held
    embedding.start()
    waiting = threading.Event()
    log_wait = index._vectors._log_wait

    def said_waiting(holder: str) -> None:
        waiting.set()
        log_wait(holder)

    index._vectors._log_wait = said_waiting  # type: ignore[method-assign]
    try:
        assert embedder.started.wait(30)
        index.update_keywords(catalogue)  # R again: served at once, with its vectors
        again = threading.Thread(target=index.update, args=(catalogue,))
        again.start()
        deadline = time.monotonic() + 30
        while again.is_alive() and not waiting.is_set():  # skipped, or waiting for R''s update
            assert time.monotonic() < deadline, "the update of R neither returned nor waited"
            time.sleep(0.01)
        assert not waiting.is_set() or again.is_alive()
    finally:
        embedder.release.set()
        embedding.join(60)
    again.join(60)
    served = index._snapshot
    assert [r.name for r in served.records] == ["water", "zap"]
    assert served.has_vector is not None and served.has_vector.all()
    # What the last update embedded is what is served: the next update of R takes the shortcut (no rebuild).
    assert index._embedded == served.records
    stats = index.update(catalogue)
    assert stats.embedded == 0 and index._snapshot.faiss_index is served.faiss_index


def test_vectors_for_a_newer_catalogue_never_rebuild_one_served_with_all_its_vectors(
    tmp_path: Path, embedder: HeldEmbedder
) -> None:
    index = ToolIndex(OptimizerConfig(), tmp_path, embedder=embedder)  # type: ignore[arg-type]
    catalogue = [tool("water", "Water the garden plants"), tool("zap", "Zap the quasar with a plasma beam")]
    index.update(catalogue)
    served = index._snapshot
    fewer = VectorCache({served.hashes[0]: 0}, served.vectors[:1].copy())  # type: ignore[index]
    index._give_vectors_to_newer(fewer)
    assert index._snapshot is served


def test_vectors_for_a_newer_catalogue_keep_the_ones_it_has(tmp_path: Path, embedder: HeldEmbedder) -> None:
    index = ToolIndex(OptimizerConfig(), tmp_path, embedder=embedder)  # type: ignore[arg-type]
    water, zap = tool("water", "Water the garden plants"), tool("zap", "Zap the quasar with a plasma beam")
    index.update([water, zap])
    both = index._snapshot
    rocket = tool("launch_rocket", "Launch a rocket into orbit", backend="big")
    index.update_keywords([water, zap, rocket])  # water and zap with vectors, rocket without
    assert index._snapshot.has_vector is not None and list(index._snapshot.has_vector) == [True, True, False]
    known = VectorCache({both.hashes[0]: 0}, both.vectors[:1].copy())  # type: ignore[index]
    index._give_vectors_to_newer(known)  # adds nothing: not rebuilt
    assert list(index._snapshot.has_vector) == [True, True, False]
