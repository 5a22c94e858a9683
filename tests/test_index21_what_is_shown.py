"""What an operator sees of the optimizer's index: whether the config has the optimizer on (`vmcp index stats`),
how many tools are still to embed, and a gateway's log saying it embeds before the minutes that takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow]

TOOLS = [
    {"name": "notes_save", "backend": "notes", "description": "Save a note with a title and a text."},
    {"name": "clock_now", "backend": "clock", "description": "The current time in a timezone."},
]


def stats(tmp_path: Path, enabled: bool) -> str:
    config = write_config(tmp_path, {"backends": [], "optimizer": {"enabled": enabled}}, f"vmcp-{enabled}.yaml")
    tools = tmp_path / "tools.jsonl"
    tools.write_text("".join(json.dumps(tool) + "\n" for tool in TOOLS), encoding="utf-8")
    index_dir = tmp_path / "empty-index"
    command = ["index", "stats", "-c", str(config), "--from-jsonl", str(tools), "--index-dir", str(index_dir)]
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_index_stats_says_whether_the_optimizer_is_on_and_what_is_left_to_embed(tmp_path: Path) -> None:
    off = stats(tmp_path, enabled=False)
    assert "off in this config (optimizer.enabled: false)" in off
    assert "0/2 tools with vectors (2 not embedded yet" in off


def test_a_gateway_says_it_embeds_before_it_does(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"backends": [demo_backend("notes")], "optimizer": {"enabled": True, "index_dir": str(tmp_path)}}
    )
    with running_gateway(config) as gateway:
        deadline = time.monotonic() + 30
        while "index updated: embedded" not in gateway.output():
            assert time.monotonic() < deadline, gateway.output()
            time.sleep(0.05)
        log = gateway.output()
    announced = log.find("index: embedding ")
    assert 0 <= announced < log.find("index updated: embedded"), log
    assert "new tools (0 reused) with all-MiniLM-L6-v2" in log[announced:]
