"""`vmcp workflow run`: arguments checked against the workflow's parameters before any backend starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DEMO_SERVER, write_config

# The demo server, after touching the file named by its first argument: proof that it was started.
STARTED_MARKER = (
    "import pathlib, runpy, sys; pathlib.Path(sys.argv[1]).touch(); sys.argv = sys.argv[2:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def marked_config(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "backend-started"
    backend = {
        "name": "notes",
        "command": sys.executable,
        "args": ["-c", STARTED_MARKER, str(marker), str(DEMO_SERVER)],
    }
    workflow = {
        "name": "save_titled",
        "description": "Save a note under a title.",
        "parameters": {
            "type": "object",
            "properties": {"title": {"type": "string"}, "text": {"type": "string"}, "count": {"type": "integer"}},
            "required": ["title", "text"],
        },
        "steps": [{"id": "save", "tool": "notes_save_note", "arguments": {"title": "{{ params.title }}", "text": "x"}}],
    }
    config = {
        "backends": [backend],
        "aggregation": {"conflict_resolution": "prefix", "prefix_format": "{backend}_{name}"},
        "workflows": [workflow],
    }
    return write_config(tmp_path, config), marker


def vmcp_workflow_run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vmcp_opt", "workflow", "run", "save_titled", "-c", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "problems"),
    [
        ((), ["  field 'text': required but missing", "  field 'title': required but missing"]),
        (
            ("--arg", "title=3", "--arg", "count=many"),
            ['  field \'count\': "many" is not of type "integer"', "  field 'text': required but missing"],
        ),
    ],
)
def test_every_bad_argument_is_listed_and_no_backend_starts(
    tmp_path: Path, args: tuple[str, ...], problems: list[str]
) -> None:
    config, marker = marked_config(tmp_path)
    result = vmcp_workflow_run(config, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "invalid arguments for workflow 'save_titled':"
    assert sorted(lines[1:]) == problems
    assert not marker.exists()


def test_valid_arguments_start_the_backend_and_run(tmp_path: Path) -> None:
    """The control for the tests above: the marker does appear when the backend starts."""
    config, marker = marked_config(tmp_path)
    # A string parameter takes the text as written, digits too (read as JSON, `3` was refused as a number).
    result = vmcp_workflow_run(config, "--arg", "title=3", "--arg", "text=x")
    assert result.returncode == 0, result.stdout + result.stderr
    assert marker.exists()


def test_a_step_through_call_tool_runs_as_it_does_in_the_gateway(tmp_path: Path) -> None:
    backend = {"name": "notes", "command": sys.executable, "args": [str(DEMO_SERVER)]}
    step = {
        "id": "save",
        "tool": "call_tool",
        "arguments": {"tool_name": "notes_save_note", "arguments": {"title": "via", "text": "call_tool"}},
    }
    config = {
        "backends": [backend],
        "optimizer": {"enabled": True, "index_dir": str(tmp_path / "index")},
        "workflows": [{"name": "save_titled", "description": "Save through call_tool.", "steps": [step]}],
    }
    done = vmcp_workflow_run(write_config(tmp_path, config), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Unknown tool" not in done.stdout + done.stderr
    assert json.loads(done.stdout)["error"] is None
