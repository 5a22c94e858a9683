"""The index's vectors on disk (optimizer/vector_store.py), through `ToolIndex.update`: reused by content
hash, kept for tools that leave, read back after a restart, rebuilt when unreadable."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.embedding import TextEmbedder, load_embedder
from vmcp_opt.optimizer.index import ToolIndex
from vmcp_opt.optimizer.vector_store import VECTORS_FILE, VectorCache, VectorStore

from .test_optimizer_index import CATALOGUE, names


@pytest.fixture(scope="module")
def embedder() -> Iterator[TextEmbedder]:
    yield load_embedder("all-MiniLM-L6-v2", progress=False)


def test_second_update_with_same_records_embeds_nothing(tmp_path: Path, embedder: TextEmbedder) -> None:
    index = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    first = index.update(CATALOGUE)
    assert (first.embedded, first.reused, first.total) == (len(CATALOGUE), 0, len(CATALOGUE))
    second = index.update(CATALOGUE)
    assert (second.embedded, second.reused, second.removed) == (0, len(CATALOGUE), 0)


def test_changed_tool_alone_is_reembedded_and_dropped_tool_counted(tmp_path: Path, embedder: TextEmbedder) -> None:
    index = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    index.update(CATALOGUE)
    changed = [replace(CATALOGUE[0], description="Tell the time now"), *CATALOGUE[1:-1]]
    stats = index.update(changed)
    assert (stats.embedded, stats.reused, stats.removed, stats.total) == (1, len(CATALOGUE) - 2, 2, len(CATALOGUE) - 1)


def test_restart_reuses_persisted_vectors(tmp_path: Path, embedder: TextEmbedder) -> None:
    ToolIndex(OptimizerConfig(), tmp_path, embedder).update(CATALOGUE)
    restarted = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    stats = restarted.update(CATALOGUE)
    assert (stats.embedded, stats.reused) == (0, len(CATALOGUE))
    assert names(restarted, "what time is it in Tokyo right now")[0] == "time_get_current_time"


def _backend(name: str) -> list[ToolRecord]:
    return [record for record in CATALOGUE if record.backend == name]


def _without(*names: str) -> list[ToolRecord]:
    return [record for record in CATALOGUE if record.backend not in names]


def test_a_backend_that_leaves_and_comes_back_is_not_embedded_again(tmp_path: Path, embedder: TextEmbedder) -> None:
    index = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    index.update(CATALOGUE)
    gone = index.update(_without("git"))
    assert gone.removed == len(_backend("git"))
    assert "git_git_log" not in names(index, "show the git commit logs")  # its tools leave the results
    back = index.update(CATALOGUE)
    assert (back.embedded, back.reused) == (0, len(CATALOGUE))
    assert names(index, "show the git commit logs")[0] == "git_git_log"


def test_kept_vectors_survive_a_restart_and_a_gateway_with_no_tools(tmp_path: Path, embedder: TextEmbedder) -> None:
    ToolIndex(OptimizerConfig(), tmp_path, embedder).update(CATALOGUE)
    outage = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    outage.update([])  # every backend down
    restarted = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    assert restarted.update(_without("git")).embedded == 0
    assert ToolIndex(OptimizerConfig(), tmp_path, embedder).update(CATALOGUE).embedded == 0


def test_only_the_newest_removed_vectors_are_kept(tmp_path: Path, embedder: TextEmbedder) -> None:
    index = ToolIndex(OptimizerConfig(keep_removed=1), tmp_path, embedder)
    index.update(CATALOGUE)
    index.update(_without("git"))
    index.update(_without("git", "fs"))  # fs leaves later: the one kept is the last of fs
    stats = index.update(CATALOGUE)
    assert stats.embedded == len(_backend("git")) + len(_backend("fs")) - 1
    none = ToolIndex(OptimizerConfig(keep_removed=0), tmp_path / "none", embedder)
    none.update(CATALOGUE)
    none.update(_without("git"))
    assert none.update(CATALOGUE).embedded == len(_backend("git"))


def test_corrupt_cache_is_rebuilt_with_a_warning(
    tmp_path: Path, embedder: TextEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    first = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    first.update(CATALOGUE)
    (first.directory / VECTORS_FILE).write_bytes(b"not a numpy file")
    with caplog.at_level(logging.WARNING):
        stats = ToolIndex(OptimizerConfig(), tmp_path, embedder).update(CATALOGUE)
    assert stats.embedded == len(CATALOGUE)
    assert "unusable (" in caplog.text and "kept aside as" in caplog.text
    # numpy's own words would tell the operator to load the file unsafely
    assert "not an index cache file" in caplog.text and "allow_pickle" not in caplog.text


def test_a_file_written_with_token_embeddings_still_loads(tmp_path: Path, embedder: TextEmbedder) -> None:
    first = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    first.update(CATALOGUE)
    path = first.directory / VECTORS_FILE
    with np.load(path) as data:
        assert "tokens" not in data
        arrays = dict(data)
    # As the index wrote it while it kept late-interaction token embeddings: arrays it now leaves alone.
    np.savez(path, **arrays, tokens=np.zeros((3, 384), np.float16), token_offsets=np.zeros(1, np.int64))
    stats = ToolIndex(OptimizerConfig(), tmp_path, embedder).update(CATALOGUE)
    assert (stats.embedded, stats.reused) == (0, len(CATALOGUE))


def _damage(path: Path, damage: Callable[[np.ndarray], None]) -> None:
    with np.load(path) as data:
        arrays = dict(data)
    vectors = arrays["vectors"].copy()
    damage(vectors)
    np.savez(path, **{**arrays, "vectors": vectors})


def _nan_and_long(vectors: np.ndarray) -> None:
    vectors[0, 0] = np.nan  # bit rot in an exponent
    vectors[1] *= 2.0  # finite, but not a unit vector


def test_vectors_that_are_not_finite_unit_vectors_are_re_embedded_with_one_warning(
    tmp_path: Path, embedder: TextEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    first = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    first.update(CATALOGUE)
    path = first.directory / VECTORS_FILE
    _damage(path, _nan_and_long)
    restarted = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    with caplog.at_level(logging.WARNING):
        stats = restarted.update(CATALOGUE)
    assert (stats.embedded, stats.reused) == (2, len(CATALOGUE) - 2)
    assert caplog.text.count("not finite unit vectors") == 1
    assert f"2 of {len(CATALOGUE)} vectors" in caplog.text
    # One bad row used to blank every answer (the NaN poisoned the fused scores' scaling).
    assert names(restarted, "what time is it in Tokyo right now")[0] == "time_get_current_time"
    with np.load(path) as data:
        assert np.isfinite(data["vectors"]).all()
        assert np.allclose(np.linalg.norm(data["vectors"], axis=1), 1.0, atol=1e-3)


def test_vectors_of_another_dtype_are_rebuilt(tmp_path: Path, embedder: TextEmbedder) -> None:
    first = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    first.update(CATALOGUE)
    path = first.directory / VECTORS_FILE
    with np.load(path) as data:
        arrays = dict(data)
    np.savez(path, **{**arrays, "vectors": arrays["vectors"].astype(np.float16)})
    assert ToolIndex(OptimizerConfig(), tmp_path, embedder).update(CATALOGUE).embedded == len(CATALOGUE)


def test_a_non_finite_vector_is_never_saved(tmp_path: Path, embedder: TextEmbedder) -> None:
    store = VectorStore(tmp_path, embedder.spec)
    good = np.eye(2, embedder.spec.dimensions, dtype=np.float32)
    bad = good.copy()
    bad[1, 0] = np.inf
    store.save(VectorCache({"a" * 64: 0, "b" * 64: 1}, bad, retired=OrderedDict([("c" * 64, good[1])])))
    loaded = VectorStore(tmp_path, embedder.spec).cache()
    assert list(loaded.rows) == ["a" * 64] and list(loaded.retired) == ["c" * 64]


def test_a_restart_with_nothing_changed_does_not_rewrite_the_vectors(tmp_path: Path, embedder: TextEmbedder) -> None:
    first = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    first.update(CATALOGUE)
    path = first.directory / VECTORS_FILE
    before = path.stat()
    restarted = ToolIndex(OptimizerConfig(), tmp_path, embedder)
    assert restarted.update(list(reversed(CATALOGUE))).embedded == 0  # the same tools in another order
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    restarted.update(_without("git"))  # a change is written: git's vectors are now retired
    assert path.stat().st_ino != before.st_ino
    assert ToolIndex(OptimizerConfig(), tmp_path, embedder).update(CATALOGUE).embedded == 0
