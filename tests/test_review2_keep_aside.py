"""An unusable file set aside (`file_lock.keep_aside`, used by the vectors cache and the usage history) is the
copy that stays: copies are ordered by when they were set aside, not by their mtime, which a rename keeps.
Real stores on real files: three earlier copies, set aside in 2020 but written (mtime) just now, and a corrupt
file last written in 2001 that is set aside now."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from vmcp_opt.optimizer.model_registry import resolve_model
from vmcp_opt.optimizer.usage import KEPT_ASIDE as USAGE_KEPT
from vmcp_opt.optimizer.usage import UsageGraph
from vmcp_opt.optimizer.vector_store import KEPT_ASIDE, VECTORS_FILE, VectorStore

MODEL = resolve_model("all-MiniLM-L6-v2")
LONG_AGO = 978_307_200 * 10**9  # 2001-01-01, in ns


def earlier_copies(path: Path, count: int) -> list[Path]:
    copies = []
    for number in range(count):
        copy = path.with_name(f"{path.name}.corrupt-2020010{number + 1}T000000Z")
        copy.write_bytes(b"earlier")  # mtime: now
        copies.append(copy)
    return copies


def test_a_vectors_file_written_long_ago_is_kept_aside_not_deleted_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = VectorStore(tmp_path, MODEL, interval=0)
    earlier = earlier_copies(store.path, KEPT_ASIDE)
    store.path.write_bytes(b"PK\x03\x04 not vectors")
    os.utime(store.path, ns=(LONG_AGO, LONG_AGO))
    with caplog.at_level(logging.WARNING, logger="vmcp_opt.optimizer.vector_store"):
        assert len(store.cache().rows) == 0
    kept = sorted(tmp_path.glob(f"{VECTORS_FILE}.corrupt-*"))
    assert len(kept) == KEPT_ASIDE, kept
    new = [p for p in kept if p not in earlier]
    assert len(new) == 1 and new[0].read_bytes() == b"PK\x03\x04 not vectors", (kept, caplog.text)
    assert new[0].name in caplog.text  # the copy the warning names is there
    assert not earlier[0].exists()  # the one set aside first went


def test_a_usage_history_written_long_ago_is_kept_aside_not_deleted_at_once(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    earlier = earlier_copies(path, USAGE_KEPT)
    path.write_text("{not json", encoding="utf-8")
    os.utime(path, ns=(LONG_AGO, LONG_AGO))
    graph = UsageGraph.load(path)
    assert len(graph) == 0
    kept = sorted(tmp_path.glob("usage.json.corrupt-*"))
    assert [p.read_text(encoding="utf-8") for p in kept if p not in earlier] == ["{not json"], kept
    assert not earlier[0].exists()
