"""The persisted index keeps what it embedded, and its writes survive a crash.

- A first build stopped with SIGTERM (a deploy, a liveness probe's restart) kept none of what it had embedded:
  the vectors were saved once, at the end. They are now saved chunk by chunk, and the next start reuses them.
- `usage.json`, `catalogue.json` and the clear marker were renamed into place without an fsync: after a host
  crash the learned history could come back empty. Seen here under strace: the temporary file is fsynced before
  its rename, and the directory after it.
- A write killed mid-way left its temporary file for good (only the vectors' were swept): the catalogue's and
  the usage history's are now removed at the next start too, when their writer is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.support import running_gateway, write_config
from vmcp_opt.optimizer.file_lock import this_host

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "examples" / "backends" / "catalog_server.py"
MODEL_DIR = "all-minilm-l6-v2"
DEADLINE = 240.0
POLL = 0.1


def _config(tmp_path: Path, index: Path, tools: int) -> Path:
    backend = {"name": "cat", "command": sys.executable, "args": [str(CATALOG), "--tools", str(tools)]}
    # No bulk child: the in-process path, which embeds in chunks.
    optimizer = {"enabled": True, "index_dir": str(index), "bulk_process_min": 0}
    return write_config(tmp_path, {"backends": [backend], "optimizer": optimizer})


def _current_hashes(vectors: Path) -> int:
    with np.load(vectors, allow_pickle=False) as data:
        return len(data["hashes"]) - int(data["retired"])


def _wait_for(condition: Callable[[], bool], what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {DEADLINE} s\n--- gateway log ---\n{log()}")
        time.sleep(POLL)


# Every chunk written, or (the default's pacing) the first at once and the rest by the stop.
@pytest.mark.parametrize("save_interval", ["0", "600"])
def test_a_build_stopped_midway_keeps_its_chunks_and_the_restart_reuses_them(
    tmp_path: Path, save_interval: str
) -> None:
    index = tmp_path / "index"
    vectors = index / MODEL_DIR / "vectors.npz"
    # Enough tools that the build outlasts the stop's wait for the embedder (5 s) on a fast host too.
    config = _config(tmp_path, index, 1000)
    env = {"VMCP_EMBED_CHUNK": "10", "VMCP_VECTORS_SAVE_INTERVAL": save_interval}
    with running_gateway(config, "--log-format", "plain", env=env) as first:
        _wait_for(lambda: "index: embedding" in first.output(), "the embedding's start", first.output)
        total = int(re.search(r"index: embedding (\d+) new tools \(0 reused\)", first.output()).group(1))  # type: ignore[union-attr]
        # Vectors on disk while the build still runs: before, the only save was the build's last step.
        _wait_for(lambda: vectors.exists() or "index updated: embedded" in first.output(), "a save", first.output)
        assert "index updated: embedded" not in first.output(), "no vectors were kept before the build ended"
        first.proc.terminate()  # SIGTERM, as a deploy sends it
        first.proc.wait(timeout=60)
        interrupted = "still being embedded" in first.output()
    kept = _current_hashes(vectors)
    assert 10 < kept <= total  # more than the first chunk: the stop wrote what was pending
    # This process's own update held the vectors' lock: the stop's save did not wait for it, nor warn.
    assert "cannot lock" not in first.output()

    with running_gateway(config, "--log-format", "plain", env=env) as second:
        _wait_for(lambda: "index updated: embedded" in second.output(), "the rebuilt index", second.output)
        done = re.search(r"index updated: embedded (\d+), reused (\d+)", second.output())
        assert done is not None
        embedded, reused = int(done.group(1)), int(done.group(2))
    assert reused >= kept > 0, second.output()  # everything the stopped build saved, none embedded again
    assert embedded + reused == total
    if interrupted:  # the usual case: the stop came before the build's end, and only the rest was embedded
        assert (reused, embedded) == (kept, total - kept)
    assert _current_hashes(vectors) == total


_SAVES = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from vmcp_opt.optimizer.listing import Listing, save_listing
from vmcp_opt.optimizer.usage import UsageGraph
from vmcp_opt.optimizer.usage_files import FileUsageHistory
directory = Path({directory!r})
graph = UsageGraph()
graph.record_task(["a", "b"])
graph.save(directory / "usage.json")
save_listing(directory, Listing([], 0, "m"))
FileUsageHistory(directory / "usage.json").clear()
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_usage_catalogue_and_clear_marker_are_fsynced_before_and_after_their_rename(tmp_path: Path) -> None:
    directory = tmp_path / "files"
    directory.mkdir()
    trace = tmp_path / "trace.txt"
    script = textwrap.dedent(_SAVES).format(root=str(ROOT), directory=str(directory))
    command = ["strace", "-f", "-y", "-qq", "-e", "trace=fsync,rename,renameat,renameat2", "-o", str(trace)]
    run = subprocess.run([*command, sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    if run.returncode != 0 and "ptrace" in run.stderr:
        pytest.skip(f"strace cannot trace here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    lines = trace.read_text().splitlines()
    for target in ("usage.json", "catalogue.json", ".usage.json.cleared"):
        renames = [i for i, line in enumerate(lines) if "rename" in line and f'/{target}"' in line]
        assert renames, f"no rename to {target}:\n" + "\n".join(lines)
        rename = renames[-1]
        tmp = lines[rename].split('"')[1]  # the first path a rename names: what it moves
        data_synced = [
            i for i, line in enumerate(lines[:rename]) if line.split()[1].startswith("fsync(") and tmp in line
        ]
        assert data_synced, f"{target}: its temporary file was not fsynced before the rename:\n" + "\n".join(lines)
        dir_synced = [line for line in lines[rename + 1 :] if "fsync(" in line and f"<{directory.resolve()}>)" in line]
        assert dir_synced, f"{target}: the directory was not fsynced after the rename:\n" + "\n".join(lines)


def test_leftovers_of_dead_writers_are_removed_at_start(tmp_path: Path) -> None:
    index = tmp_path / "index"
    (index / MODEL_DIR).mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a writer that died: its pid runs no more on this host
    host = this_host()
    dead = [
        index / f".catalogue.json.{host}-{gone.pid}-deadbeef-00000001.tmp",
        index / f".usage.json.{host}-{gone.pid}-deadbeef-00000002.tmp",
        index / f"..usage.json.cleared.{host}-{gone.pid}-deadbeef-00000003.tmp",
        index / MODEL_DIR / f".vectors-{host}-{gone.pid}-deadbeef-00000004.tmp",
    ]
    # A writer that runs (this test), its file young: being written, so it stays.
    live = index / f".usage.json.{host}-{os.getpid()}-cafebabe-00000005.tmp"
    for path in [*dead, live]:
        path.write_bytes(b"\0" * 100_000)
    config = _config(tmp_path, index, 20)
    with running_gateway(config, "--log-format", "plain") as gateway:
        # The usage history sweeps when it loads (before the gateway serves), the catalogue's first save before
        # it writes, the vectors' first update when it takes their lock: all done once the index is built.
        _wait_for(lambda: "index updated: embedded" in gateway.output(), "the index", gateway.output)
        _wait_for(lambda: (index / "catalogue.json").exists(), "the catalogue's save", gateway.output)
        assert [p.name for p in dead if p.exists()] == [], gateway.output()
        assert live.exists()
