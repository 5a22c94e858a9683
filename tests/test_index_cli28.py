"""`vmcp index` by the real console script while a backend is down, and `vmcp index usage` with usage learning off.

A tool list taken while a backend did not answer lacks its tools; saved, it stood for the catalogue in every later
`stats` and `search` (0 tools, an empty ranking) until someone thought of `--refresh`, and `build` with no backend
answering said "0 tools indexed" and exited 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import demo_backend, free_port, http_demo_backend, write_config
from vmcp_opt.optimizer.listing import LISTING_FILE

pytestmark = [pytest.mark.slow]

VMCP = Path(sys.executable).parent / "vmcp"  # the console script, as an operator runs it
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VMCP), *args], capture_output=True, text=True, timeout=120, check=False, env=ENV)


def saved_names(index_dir: Path) -> set[str]:
    data = json.loads((index_dir / LISTING_FILE).read_text(encoding="utf-8"))
    return {tool["name"] for tool in data["tools"]}


def http_config(tmp_path: Path, port: int, index_dir: Path) -> Path:
    backend = {"name": "notes", "url": f"http://127.0.0.1:{port}/mcp", "transport": "streamable-http"}
    return write_config(tmp_path, {"backends": [backend], "optimizer": {"enabled": True, "index_dir": str(index_dir)}})


def test_stats_while_the_backend_is_down_saves_nothing_and_search_sees_its_tools_once_it_is_back(
    tmp_path: Path,
) -> None:
    index_dir, port = tmp_path / "idx", free_port()
    config = http_config(tmp_path, port, index_dir)

    down = vmcp("index", "stats", "-c", str(config))
    assert down.returncode == 0, down.stderr
    assert not (index_dir / LISTING_FILE).exists()
    assert "no tools from backend(s) notes" in down.stderr and "was not updated" in down.stderr

    with http_demo_backend(port):
        found = vmcp("index", "search", "save a note", "--keyword", "-c", str(config))
    assert found.returncode == 0, found.stderr
    assert "notes_save_note" in found.stdout  # asked the backend: no empty list saved stood in its way
    assert "notes_save_note" in saved_names(index_dir)


def test_a_listing_taken_while_one_backend_is_down_does_not_replace_the_saved_one(tmp_path: Path) -> None:
    index_dir, port = tmp_path / "idx", free_port()
    http = {"name": "remote", "url": f"http://127.0.0.1:{port}/mcp", "transport": "streamable-http"}
    optimizer = {"enabled": True, "index_dir": str(index_dir)}
    config = write_config(tmp_path, {"backends": [demo_backend("local"), http], "optimizer": optimizer})
    with http_demo_backend(port):
        both = vmcp("index", "stats", "--refresh", "-c", str(config))
    assert both.returncode == 0, both.stderr
    complete = saved_names(index_dir)
    assert {"local_save_note", "remote_save_note"} <= complete

    partial = vmcp("index", "stats", "--refresh", "-c", str(config))
    assert partial.returncode == 0, partial.stderr
    assert saved_names(index_dir) == complete
    assert "no tools from backend(s) remote" in partial.stderr and "was not updated" in partial.stderr
    after = vmcp("index", "search", "save a note", "--keyword", "-c", str(config))
    assert after.returncode == 0, after.stderr
    assert "remote_save_note" in after.stdout and "last listed them" in after.stderr


def test_build_with_no_backend_answering_fails_and_names_it(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    config = http_config(tmp_path, free_port(), index_dir)
    built = vmcp("index", "build", "-c", str(config))
    assert built.returncode == 1, built.stdout + built.stderr
    assert not (index_dir / LISTING_FILE).exists()
    assert "no tools from backend(s) notes" in built.stderr and "nothing indexed" in built.stderr
    assert "tools indexed" not in built.stdout


def test_usage_with_usage_learning_off_says_so_instead_of_promising_a_history(tmp_path: Path) -> None:
    optimizer = {"enabled": True, "usage": False, "index_dir": str(tmp_path / "idx")}
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "optimizer": optimizer})
    shown = vmcp("index", "usage", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    assert "optimizer.usage is off" in shown.stdout
    assert "no usage history yet" not in shown.stdout
