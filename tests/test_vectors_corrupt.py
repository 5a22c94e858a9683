"""A `vectors.npz` that is not vectors, met by the real `vmcp index build` and a real gateway on real files:
it is kept aside as `vectors.npz.corrupt-<time>` (the newest three such copies stay), said in one warning
that names the copy, and the cache is rebuilt; and the rebuilt file has the mode every index file has, 0666
less the umask, like `catalogue.json` (not the 0600 of a temporary file)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support import demo_backend, running_gateway, write_config
from vmcp_opt.optimizer.model_registry import resolve_model
from vmcp_opt.optimizer.vector_store import KEPT_ASIDE

pytestmark = [pytest.mark.slow]

SLUG = resolve_model("all-MiniLM-L6-v2").slug
GARBAGE = b"PK\x03\x04 not a zip archive after all"
TOOLS = [{"name": "notes_save", "backend": "notes", "description": "Save a note with a title and a text."}]


def build(tmp_path: Path, index_dir: Path, umask: int) -> subprocess.CompletedProcess[str]:
    tools = tmp_path / "tools.jsonl"
    tools.write_text("".join(json.dumps(tool) + "\n" for tool in TOOLS), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "index", "build", "--from-jsonl", str(tools), "--index-dir", str(index_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300"},
        umask=umask,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def vectors_of(path: Path) -> int:
    with np.load(path, allow_pickle=False) as data:
        return len(data["hashes"])


def test_index_build_keeps_a_corrupt_vectors_file_aside_and_rebuilds_it(tmp_path: Path) -> None:
    model_dir = tmp_path / "idx" / SLUG
    model_dir.mkdir(parents=True)
    (model_dir / "vectors.npz").write_bytes(GARBAGE)
    done = build(tmp_path, tmp_path / "idx", umask=0o027)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "1 tools indexed" in done.stdout and "embedded 1" in done.stdout, done.stdout
    kept = list(model_dir.glob("vectors.npz.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == GARBAGE
    assert done.stderr.count("unusable") == 1, done.stderr  # one warning, naming the copy
    assert "kept aside as" in done.stderr and kept[0].name in done.stderr.replace("\n", ""), done.stderr
    assert vectors_of(model_dir / "vectors.npz") == 1
    assert mode(model_dir / "vectors.npz") == 0o640  # 0666 less the umask, not mkstemp's 0600
    assert not list(model_dir.glob(".vectors-*.tmp"))


def test_only_the_newest_corrupt_copies_are_kept(tmp_path: Path) -> None:
    model_dir = tmp_path / "idx" / SLUG
    model_dir.mkdir(parents=True)
    for number in range(KEPT_ASIDE):  # older copies, oldest first
        old = model_dir / f"vectors.npz.corrupt-2020010{number}T000000Z"
        old.write_bytes(b"old")
        os.utime(old, ns=(number * 10**9, number * 10**9))
    (model_dir / "vectors.npz").write_bytes(GARBAGE)
    done = build(tmp_path, tmp_path / "idx", umask=0o022)
    assert done.returncode == 0, (done.stdout, done.stderr)
    kept = sorted(p.name for p in model_dir.glob("vectors.npz.corrupt-*"))
    assert len(kept) == KEPT_ASIDE and "vectors.npz.corrupt-20200100T000000Z" not in kept, kept
    assert any((model_dir / name).read_bytes() == GARBAGE for name in kept)
    assert mode(model_dir / "vectors.npz") == 0o644


def test_a_gateway_rebuilds_a_corrupt_vectors_file_with_the_catalogue_s_mode(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    (index_dir / SLUG).mkdir(parents=True)
    vectors = index_dir / SLUG / "vectors.npz"
    vectors.write_bytes(GARBAGE)
    config = write_config(
        tmp_path, {"backends": [demo_backend("notes")], "optimizer": {"enabled": True, "index_dir": "idx"}}
    )
    with running_gateway(config, "--log-level", "warning") as gateway:
        deadline = time.monotonic() + 60  # a hang guard: the loop ends when the file is rebuilt
        while not (vectors.exists() and vectors.read_bytes() != GARBAGE and (index_dir / "catalogue.json").exists()):
            assert time.monotonic() < deadline, gateway.output()
            time.sleep(0.1)
        log = gateway.output()
    assert vectors_of(vectors) > 0
    kept = list(vectors.parent.glob("vectors.npz.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == GARBAGE
    assert log.count("unusable") == 1 and str(kept[0]) in log.replace("\n", ""), log
    assert mode(vectors) == mode(index_dir / "catalogue.json")
