"""Two configs on one index_dir: `vmcp index` of one never shows the tools the other's gateway saved.

Each gateway writes the catalogue it serves beside the index (`catalogue.json`), which `vmcp index stats|search`
read instead of starting the backends. Another config sharing the directory (or this one, changed while the
gateway ran with the optimizer off, which saves no catalogue) overwrites it: the command must then ask this
config's backends, not rank tools this config does not serve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import demo_backend, running_gateway, write_config
from vmcp_opt.optimizer.listing import LISTING_FILE

pytestmark = [pytest.mark.slow]

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=120, check=False, env=ENV
    )


def saved_names(index_dir: Path) -> set[str]:
    try:
        data = json.loads((index_dir / LISTING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {tool["name"] for tool in data["tools"]}


def wait_saved(index_dir: Path, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while name not in saved_names(index_dir):
        assert time.monotonic() < deadline, f"{name} never saved in {index_dir / LISTING_FILE}"
        time.sleep(0.05)


def test_index_search_of_one_config_ignores_the_catalogue_another_config_saved(tmp_path: Path) -> None:
    index_dir = tmp_path / "shared-index"
    optimizer = {"enabled": True, "index_dir": str(index_dir)}
    mine = write_config(tmp_path, {"backends": [demo_backend("notes")], "optimizer": optimizer}, "mine.yaml")
    other = write_config(tmp_path, {"backends": [demo_backend("ops")], "optimizer": optimizer}, "other.yaml")
    with running_gateway(other):
        wait_saved(index_dir, "ops_save_note")

    found = vmcp("index", "search", "save a note", "-c", str(mine), "--keyword", "-n", "3")
    assert found.returncode == 0, found.stderr
    assert "ops_save_note" not in found.stdout  # the other config's tool, which this one does not serve
    assert "notes_save_note" in found.stdout
    assert "listed for another configuration" in found.stderr
    # What it asked its backends is now the saved catalogue, which the next command reads as it is.
    assert "notes_save_note" in saved_names(index_dir)
    again = vmcp("index", "stats", "-c", str(mine))
    assert again.returncode == 0, again.stderr
    assert "last listed them" in again.stderr and "another configuration" not in again.stderr
