"""A usage history damaged into JSON nested thousands deep is handled like any unreadable one.

`json.loads` raises RecursionError on it, not a JSONDecodeError: the gateway's load warned and started empty but
left the file in place, so every later save failed on it (a warning each sync, nothing learned ever written),
and `vmcp index usage` showed a traceback. Now it is kept aside, the next save writes a fresh history, and the
command names the problem. Real files and the real `vmcp` command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmcp_opt.optimizer.usage_files import FileUsageHistory

DEEP = '{"version": 1, "tasks": ' + "[" * 50_000


def test_a_deeply_nested_history_is_kept_aside_and_the_next_save_writes_a_fresh_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.json"
    path.write_text(DEEP, encoding="utf-8")
    history = FileUsageHistory(path)
    graph = history.load()
    assert len(graph) == 0
    [aside] = tmp_path.glob("usage.json.corrupt-*")
    assert aside.read_text(encoding="utf-8") == DEEP  # nothing of it lost
    assert "nested too deeply" in caplog.text and str(aside) in caplog.text
    graph.add_to_task("time_get_current_time", [])
    history.save(graph)  # raised RecursionError on every sync before
    assert json.loads(path.read_text(encoding="utf-8"))["tasks"] == {"time_get_current_time": 1}


def test_index_usage_names_a_deeply_nested_history_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "usage.json").write_text(DEEP, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "index", "usage", "--index-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "unreadable usage history" in done.stderr and "nested too deeply" in done.stderr
    assert (tmp_path / "usage.json").read_text(encoding="utf-8") == DEEP  # the command only reads
