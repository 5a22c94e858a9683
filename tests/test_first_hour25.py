"""First-hour review, round 25: `vmcp workflow run` against a backend slower than `server.startup_wait`, and
`${VAR}` written in a setting nothing expands (a literal `${LOG_DIR}` directory is never what was meant)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support import DEMO_SERVER

# The demo server, started only after a pause far longer than the configs' `server.startup_wait` (0.2 s).
SLOW_START = (
    "import runpy, sys, time; time.sleep(3); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)
# A backend that never answers its handshake.
NEVER_ANSWERS = "import time; time.sleep(600)"


def _config(directory: Path, config: dict[str, Any]) -> Path:
    """The file as written: no test defaults added (`tests.support.write_config` sets a long `startup_wait`)."""
    path = directory / "vmcp.yaml"
    path.write_text(yaml.safe_dump({"optimizer": {"enabled": False}, **config}), encoding="utf-8")
    return path


def _vmcp(
    *args: str, cwd: Path, env: dict[str, str] | None = None, unset: tuple[str, ...] = (), timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vmcp_opt", *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    for name in unset:
        environment.pop(name, None)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=environment)


def _workflow_config(directory: Path, backend_args: list[str], **extra: Any) -> Path:
    return _config(
        directory,
        {
            "server": {"startup_wait": 0.2},
            "backends": [{"name": "late", "command": sys.executable, "args": backend_args}],
            "aggregation": {"conflict_resolution": "prefix", "prefix_format": "{backend}_{name}"},
            "workflows": [
                {
                    "name": "save",
                    "description": "Save one note.",
                    "steps": [{"id": "save", "tool": "late_save_note", "arguments": {"title": "t", "text": "x"}}],
                }
            ],
            **extra,
        },
    )


def test_workflow_run_waits_for_a_backend_slower_than_startup_wait(tmp_path: Path) -> None:
    config = _workflow_config(tmp_path, ["-c", SLOW_START, str(DEMO_SERVER)])
    run = _vmcp("workflow", "run", "save", "-c", str(config), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "saved note 't'" in run.stdout
    assert "Unknown tool" not in run.stdout + run.stderr


def test_workflow_run_names_the_backend_that_never_connects(tmp_path: Path) -> None:
    config = _workflow_config(tmp_path, ["-c", NEVER_ANSWERS], timeouts={"connect": 2})
    run = _vmcp("workflow", "run", "save", "-c", str(config), cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    # Which backend is missing and why, not only the router's "Unknown tool".
    assert "backend 'late'" in run.stderr, run.stderr
    assert "did not connect within 2s" in run.stderr, run.stderr


# Set, as a user expecting `${LOG_DIR}` to be expanded would have them.
REFERENCED = {"LOG_DIR": "/var/log", "STATE_DIR": "/var/lib"}
# The suite's own VMCP_DATA_DIR (conftest.py) would hide the file's `data_dir`, the setting under test.
FILE_SETTINGS = ("VMCP_DATA_DIR",)


def _literal_reference_config(directory: Path) -> Path:
    backend = {
        "name": "notes",
        "description": "Writes ${NOTE} placeholders literally",  # free text: a description may say `${X}`
        "command": sys.executable,
        "args": [str(DEMO_SERVER)],
        "env": {"NOTES_HOME": "${HOME}/notes"},  # expanded: allowed
    }
    return _config(
        directory,
        {
            "data_dir": "${STATE_DIR}/vmcp",
            "backends": [backend],
            "telemetry": {"audit": {"enabled": True, "output": "${LOG_DIR}/audit.log"}},
        },
    )


def _assert_refused(run: subprocess.CompletedProcess[str], directory: Path) -> None:
    said = run.stdout + run.stderr
    assert run.returncode == 2, said
    lines = said.splitlines()
    data_dir = [line for line in lines if "data_dir" in line and "${STATE_DIR}" in line]
    audit = [line for line in lines if "telemetry.audit.output" in line and "${LOG_DIR}" in line]
    assert data_dir and audit, said
    assert "VMCP_DATA_DIR" in data_dir[0] and "VMCP_TELEMETRY__AUDIT__OUTPUT" in audit[0], said
    assert "NOTE" not in said and "NOTES_HOME" not in said, said
    assert not (directory / "${LOG_DIR}").exists() and not (directory / "${STATE_DIR}").exists()


def test_validate_refuses_a_variable_in_a_setting_that_does_not_expand_it(tmp_path: Path) -> None:
    config = _literal_reference_config(tmp_path)
    run = _vmcp("validate", "-c", str(config), cwd=tmp_path, env=REFERENCED, unset=FILE_SETTINGS)
    _assert_refused(run, tmp_path)


def test_serve_refuses_a_variable_in_a_setting_that_does_not_expand_it(tmp_path: Path) -> None:
    config = _literal_reference_config(tmp_path)
    run = _vmcp(
        "serve", "-c", str(config), "--port", "0", cwd=tmp_path, env=REFERENCED, unset=FILE_SETTINGS, timeout=60
    )
    _assert_refused(run, tmp_path)
