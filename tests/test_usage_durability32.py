"""The usage history survives a disk that fills mid-write, and a count no float holds is refused, not ranked with.

- A journal line the disk could store only part of (`os.write` returns short, without an error) ran into the next
  sync's line once space was freed: both syncs' counts were lost to every restart and every other replica, and
  nothing said so. Now a line is written whole or not at all (the part cut off again), the save fails, and its
  counts stay new for the next sync.
- A count past 2**53 in a hand-edited or damaged `usage.json` made every find_tool ranking its tool fail with
  OverflowError, and was written back: now the file is unreadable (kept aside), as any other damaged count.

The full disk is the kernel's: a child process whose file-size limit (`RLIMIT_FSIZE`, SIGXFSZ ignored) stops the
journal part-way through a line, the same short write a full disk makes, without mounting a file system.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import demo_backend, running_gateway, write_config
from tests.test_usage31 import seeded
from vmcp_opt.optimizer.usage import UsageGraph
from vmcp_opt.optimizer.usage_files import FileUsageHistory, journal_path

CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from vmcp_opt.optimizer.usage import UsageGraph
    from vmcp_opt.optimizer.usage_files import FileUsageHistory, journal_path

    path = Path(sys.argv[1])
    graph = UsageGraph()
    for n in range(3000):  # past SMALL_HISTORY: later syncs append journal lines
        graph.record_task([f"seed_{n}", *(f"seed_{(n + k) % 3000}" for k in range(1, 6))])
    history = FileUsageHistory(path)
    history.load()
    history.save(graph)
    graph.record_task(["first_tool", "first_companion"])
    history.save(graph)  # the journal's first line
    journal = journal_path(path)
    size = journal.stat().st_size
    graph.record_task(["second_tool_" + "x" * 400, "second_companion"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))  # room for 100 bytes of a longer line
    try:
        history.save(graph)
        print("saved")
    except OSError as exc:
        print("refused", exc.errno)
    print("journal", journal.stat().st_size - size)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the disk has room again
    graph.record_task(["third_tool", "third_companion"])
    history.save(graph)
    print("saved again")
    """
)


def test_a_journal_line_cut_short_by_a_full_disk_loses_no_counts(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0].startswith("refused"), done.stdout  # the save says it failed ...
    assert lines[1] == "journal 0", done.stdout  # ... and leaves no part of its line
    assert lines[2] == "saved again", done.stdout
    assert journal_path(path).read_bytes().endswith(b"\n")
    together = UsageGraph.read(path).to_json()["together"]  # what a restart or another replica reads
    assert together["first_tool"] == {"first_companion": 1}
    assert together["second_tool_" + "x" * 400] == {"second_companion": 1}  # kept new, saved by the next sync
    assert together["third_tool"] == {"third_companion": 1}


def test_a_count_no_float_holds_is_kept_aside_and_find_tool_answers(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    huge = 10**400  # `min(count, tasks) / (tasks + 2.0)` raised OverflowError
    history = {"version": 1, "tasks": {"notes_whoami": 3}, "together": {"notes_whoami": {"notes_slow_echo": huge}}}
    (index_dir / "usage.json").write_text(json.dumps(history), encoding="utf-8")
    config = {"backends": [demo_backend("notes")], "optimizer": {"enabled": True, "index_dir": str(index_dir)}}

    async def main(url: str) -> None:
        async with Client(url) as client:
            found = await client.call_tool("find_tool", {"query": "who am i", "limit": 3})
            assert not found.is_error, found.content

    with running_gateway(write_config(tmp_path, config)) as gateway:
        anyio.run(main, gateway.url)
        log = gateway.output()
    assert "expected an integer from 0 to 2**53, got a 1329-bit integer" in log
    assert list(index_dir.glob("usage.json.corrupt*"))


def test_a_journal_line_whose_sync_fails_is_not_counted_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The line was written whole but its fsync failed (EIO on NFS, a failing disk): the save fails and its counts
    stay new, so the line must go, or the next sync writes them again and every reader counts them twice."""
    path = tmp_path / "usage.json"
    graph = seeded(path)  # past SMALL_HISTORY: later syncs append journal lines
    history = FileUsageHistory(path)
    history.load()
    graph.record_task(["first_tool", "first_companion"])
    history.save(graph)  # the journal exists
    graph.record_task(["second_tool", "second_companion"])
    real = os.fsync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError):
        history.save(graph)
    monkeypatch.setattr(os, "fsync", real)
    graph.record_task(["third_tool", "third_companion"])
    history.save(graph)
    together = UsageGraph.read(path).to_json()["together"]
    assert together["second_tool"] == {"second_companion": 1}
    assert together["third_tool"] == {"third_companion": 1}


def test_a_history_a_newer_release_wrote_is_left_as_it_is(tmp_path: Path) -> None:
    """After a rollback: the newer release's history is not damage. It was moved aside as unreadable (and the
    KEPT_ASIDE rotation could drop it), so rolling forward again found the old release's fresh file instead."""
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    newer = json.dumps({"version": 2, "tasks": {"notes_whoami": 3}, "together": {}, "more": "a field of format 2"})
    (index_dir / "usage.json").write_text(newer, encoding="utf-8")
    optimizer = {"enabled": True, "index_dir": str(index_dir), "usage_sync_interval": 0.2}
    config = {"backends": [demo_backend("notes")], "optimizer": optimizer}

    async def main(url: str) -> None:
        async with Client(url, mode="legacy") as client:  # two calls in one task: a pair learned
            for name, arguments in (("notes_whoami", {}), ("notes_slow_echo", {"message": "hi", "seconds": 0})):
                assert not (await client.call_tool(name, arguments)).is_error

    with running_gateway(write_config(tmp_path, config)) as gateway:
        anyio.run(main, gateway.url)
    log = gateway.output()
    assert (index_dir / "usage.json").read_text(encoding="utf-8") == newer  # not overwritten at the stop either
    assert not list(index_dir.glob("usage.json.corrupt*"))
    assert "written by a newer vmcp-opt (format 2; this release reads 1): left as it is" in log
