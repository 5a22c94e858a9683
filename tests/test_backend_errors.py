"""Why a stdio backend is down, as `vmcp backends --json` reports it: a process that exits at start gives its
last stderr line (secrets masked), a command that does not exist says so. Real backend processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import write_config

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-token-value"
CRASH = "import os, sys; sys.stderr.write('starting\\nbad token ' + os.environ['API_TOKEN'] + '\\n'); sys.exit(3)"


def test_a_backend_that_exits_at_start_or_does_not_exist_says_why(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "backends": [
                {"name": "crash", "command": sys.executable, "args": ["-c", CRASH], "env": {"API_TOKEN": SECRET}},
                {"name": "nocmd", "command": "definitely-not-a-command-xyz"},
                {"name": "relcmd", "command": "./bin/nothing-here"},
            ],
        },
    )
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "backends", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = {backend["name"]: backend["last_error"] for backend in json.loads(done.stdout)}
    assert errors["crash"].endswith("; its last stderr line: bad token ***"), errors
    assert errors["nocmd"] == "command not found on PATH: 'definitely-not-a-command-xyz'"
    assert errors["relcmd"] == f"command not found: {(tmp_path / 'bin' / 'nothing-here').resolve()}"
    assert SECRET not in done.stdout + done.stderr
