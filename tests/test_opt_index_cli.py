"""`vmcp index stats` by the real command over a real backend when the saved catalogue (catalogue.json) is
damaged: the command says it did not read it and asks the backends, never ends in a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import demo_backend, write_config
from vmcp_opt.config import VmcpConfig
from vmcp_opt.optimizer.listing import LISTING_FILE

pytestmark = [pytest.mark.slow]

MODEL = VmcpConfig().optimizer.model
TOOL = {"name": "ghost_tool", "backend": "ghost", "description": "d", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("saved", "reason"),
    [
        ([TOOL], "expected a JSON object, got list"),
        (
            {"model": MODEL, "tools_list_tokens": 5, "saved_at": 1e9, "tools": [{**TOOL, "input_schema": "object"}]},
            "tools[0]: input_schema",
        ),
        ({"model": MODEL, "tools_list_tokens": 5, "saved_at": "nan", "tools": [TOOL]}, "NaN"),
    ],
)
def test_a_damaged_saved_catalogue_is_reported_and_the_backends_are_asked(
    tmp_path: Path, saved: object, reason: str
) -> None:
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    (index_dir / LISTING_FILE).write_text(json.dumps(saved), encoding="utf-8")
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "optimizer": {"index_dir": str(index_dir)}})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "index", "stats", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"saved catalogue {index_dir / LISTING_FILE} not read" in done.stderr and reason in done.stderr
    # The live backend's tools, not the damaged file's.
    assert "notes" in done.stdout and "ghost" not in done.stdout
