"""A stdio backend that cannot start, through the real CLI (`vmcp backends` connects to each backend once): the
reason names what is wrong (the exit status of a process that died at start, the `cwd` or the command at
fault), never a bare "Connection closed" or an errno."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import write_config

pytestmark = pytest.mark.slow

CRASHING = "import sys\nprint('boom: no database configured', file=sys.stderr, flush=True)\nsys.exit(3)\n"


def test_why_a_stdio_backend_did_not_start_names_its_cause(tmp_path: Path) -> None:
    crashing = tmp_path / "crashing.py"
    crashing.write_text(CRASHING, encoding="utf-8")
    no_shebang = tmp_path / "no_shebang.py"
    no_shebang.write_text("print('hi')\n", encoding="utf-8")
    no_shebang.chmod(0o755)
    not_executable = tmp_path / "not_executable.sh"
    not_executable.write_text("#!/bin/sh\n", encoding="utf-8")
    not_executable.chmod(0o644)
    backends = [
        {"name": "crashing", "command": sys.executable, "args": [str(crashing)]},
        {"name": "gone", "command": str(tmp_path / "missing" / "server")},
        {"name": "nocwd", "command": sys.executable, "args": [str(crashing)], "cwd": str(tmp_path / "nowhere")},
        {"name": "noexec", "command": str(not_executable)},
        {"name": "noshebang", "command": str(no_shebang)},
    ]
    config = write_config(tmp_path, {"backends": backends, "failure": {"restart": {"enabled": False}}})
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "backends", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    )
    out = done.stdout + done.stderr
    assert "backend crashing failed: the process exited with code 3; its last stderr line: boom" in out
    assert f"backend gone failed: command not found: {tmp_path / 'missing' / 'server'}" in out
    assert "on PATH" not in out  # a path is not looked up on PATH
    assert f"backend nocwd failed: its cwd {tmp_path / 'nowhere'} does not exist" in out
    assert f"backend noexec failed: command is not executable: {not_executable}" in out
    assert f"backend noshebang failed: command is not a program this system can run: {no_shebang}" in out
    assert "Connection closed" not in out and "Errno" not in out
