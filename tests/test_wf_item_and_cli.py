"""A for_each item named like a template variable is refused at load; `vmcp workflow run` prints other scripts
as written, with what could upset a terminal still escaped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import demo_backend, write_config


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["index", "params", "steps"])
def test_a_for_each_item_may_not_hide_a_template_name(tmp_path: Path, name: str) -> None:
    step = {
        "id": "each",
        "type": "for_each",
        "tool": "notes_search_notes",
        "item": name,
        "over": "{{ [1, 2] }}",
        "arguments": {"query": "x"},
    }
    workflow = {"name": "wf", "description": "d", "steps": [step]}
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "workflows": [workflow]})
    result = vmcp("validate", "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    expected = f"workflows[0].steps[0].item: '{name}' is a name templates already read (params, steps, index)"
    assert expected in result.stdout + result.stderr


def test_workflow_run_prints_other_scripts_as_written(tmp_path: Path) -> None:
    workflow = {
        "name": "wf_unicode",
        "description": "Save a note with a Japanese title and find it again.",
        "parameters": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
        "steps": [
            {"id": "save", "tool": "notes_save_note", "arguments": {"title": "{{ params.title }}", "text": "本文"}},
            {"id": "find", "tool": "notes_search_notes", "depends_on": ["save"], "arguments": {"query": "日本"}},
        ],
    }
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "workflows": [workflow]})
    result = vmcp("workflow", "run", "wf_unicode", "-c", str(config), "--arg", "title=日本語\u202etxt")
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"日本語\\u202etxt"' in result.stdout  # the bidirectional override escaped, the rest readable
    assert "\u202e" not in result.stdout and "\\u65e5" not in result.stdout
    output = result.stdout[result.stdout.index("output:") + len("output:") :]
    assert json.loads(output) == {"result": ["日本語\u202etxt"]}
