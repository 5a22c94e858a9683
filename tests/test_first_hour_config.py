"""A newcomer's hand-written config and first commands: every mistake named by where it is and what to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import DEMO_SERVER, ROOT


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_section_written_twice_is_refused_naming_both_lines_not_half_dropped(tmp_path: Path) -> None:
    # A second `backends:` pasted below the first: YAML alone keeps the second and drops `time` silently.
    path = write(
        tmp_path,
        "vmcp.yaml",
        "backends:\n"
        "  - {name: time, command: python, args: [-m, mcp_server_time]}\n"
        "optimizer: {enabled: false}\n"
        "backends:\n"
        "  - {name: notes, command: python, args: [notes.py], env: {A: x, A: y}}\n",
    )
    checked = vmcp("validate", "-c", str(path))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stderr.splitlines()[1:] == [
        f"  {path}: line 4: key 'backends' is already set on line 1 of the same mapping; "
        "YAML keeps only the last, so merge the two",
        f"  {path}: line 5: key 'A' is already set on line 5 of the same mapping; "
        "YAML keeps only the last, so merge the two",
    ]
    served = vmcp("serve", "-c", str(path), "--port", "0")
    assert served.returncode == 2 and "key 'backends' is already set on line 1" in served.stderr, served.stderr


def test_a_key_written_twice_in_a_json_config_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "vmcp.json", '{"optimizer": {"enabled": false, "enabled": true}, "backends": []}')
    checked = vmcp("validate", "-c", str(path))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stderr.splitlines()[1:] == [
        f"  {path}: key 'enabled' is set twice in one object; JSON keeps only the last, so merge the two"
    ]


def test_yaml_mistakes_are_one_line_with_the_line_column_and_likely_cause(tmp_path: Path) -> None:
    deeper = write(tmp_path, "deeper.yaml", "backends:\n  - name: t\n    command: python\n     args: [a]\n")
    tab = write(tmp_path, "tab.yaml", "backends:\n\t- name: t\n")
    expected = {
        deeper: "not valid YAML at line 4, column 10: mapping values are not allowed here (likely a line indented "
        "deeper than the key above it, or a value with ': ' in it to quote)",
        tab: "not valid YAML at line 2, column 1: found character '\\t' that cannot start any token "
        "(likely a tab: YAML indents with spaces only)",
    }
    for path, problem in expected.items():
        checked = vmcp("validate", "-c", str(path))
        assert checked.returncode == 2, checked.stdout + checked.stderr
        assert checked.stderr.splitlines()[1:] == [f"  {path}: {problem}"]


def test_validate_warns_of_backends_that_could_not_be_launched_here(tmp_path: Path) -> None:
    (tmp_path / "not-executable.sh").write_text("#!/bin/sh\n", encoding="utf-8")
    path = write(
        tmp_path,
        "vmcp.yaml",
        "backends:\n"
        "  - {name: typo, command: pyhton, args: [-m, mcp_server_time]}\n"
        "  - {name: script, command: python, args: [backends/demo_server.py]}\n"
        "  - {name: cwd, command: python, args: [demo_server.py], cwd: nowhere}\n"
        "  - {name: mode, command: ./not-executable.sh}\n"
        f"  - {{name: fine, command: python, args: [demo_server.py], cwd: {DEMO_SERVER.parent}}}\n",
    )
    checked = vmcp("validate", "-c", str(path))
    # Valid as a file (it may be meant for another machine), but each backend that cannot start here is named.
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("valid: 5 backends")
    assert checked.stderr.splitlines() == [
        "warning: backends[0].command: 'pyhton' is not found on PATH; the backend would not start",
        f"warning: backends[1].args[0]: {tmp_path / 'backends/demo_server.py'} does not exist (relative paths start "
        "at the backend's cwd, which is the config file's directory unless `cwd` says otherwise); "
        "the backend would not start",
        f"warning: backends[2].cwd: {tmp_path / 'nowhere'} is not a directory; the backend would not start",
        f"warning: backends[3].command: {tmp_path / 'not-executable.sh'} is not executable (chmod +x it, or run it "
        "with its interpreter: command: python, args: [it]); the backend would not start",
    ]


# Raises Ctrl-C's signal in the process itself while `vmcp_opt.cli` imports typer: deterministically inside
# the second of imports a user's Ctrl-C lands in right after typing `vmcp serve`.
INTERRUPTED_IMPORT = """
import os, signal, sys

# As in a terminal: a runner started in the background (`cmd &` without job control) hands its children
# SIGINT ignored, and Python then installs no handler of its own.
signal.signal(signal.SIGINT, signal.default_int_handler)

class InterruptOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == "typer":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptOnImport())
sys.argv = ["vmcp", "validate"]
from vmcp_opt.cli import app
app()
"""


def test_ctrl_c_while_the_command_loads_exits_130_without_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
    assert done.returncode == 130 and done.stdout == "", (done.returncode, done.stdout)


def test_an_unquoted_number_or_yes_where_text_is_needed_says_to_quote_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "vmcp.yaml",
        "backends:\n  - {name: t, command: python, args: [-m, server, --port, 8080], env: {DEBUG: on, V: 1.10}}\n",
    )
    checked = vmcp("validate", "-c", str(path))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stderr.splitlines()[1:] == [
        "  backends[0].args[3]: Input should be a valid string, got the number 8080: write it in quotes to pass it "
        "as text",
        "  backends[0].env.DEBUG: Input should be a valid string, got the boolean true (YAML reads an unquoted yes, "
        "no, on, off, true or false so): write it in quotes",
        "  backends[0].env.V: Input should be a valid string, got the number 1.1: write it in quotes to pass it as "
        "text",
    ]


def test_validate_warns_of_an_index_dir_that_is_a_file(tmp_path: Path) -> None:
    """The gateway serves without a place to save its index (each start embeds everything again): said early."""
    write(tmp_path, "not-a-dir", "x")
    path = write(tmp_path, "vmcp.yaml", "backends: []\noptimizer:\n  index_dir: not-a-dir/indexes\n")
    checked = vmcp("validate", "-c", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stderr.splitlines()[-1:] == [  # after the warning that `backends: []` serves nothing
        f"warning: optimizer.index_dir: {tmp_path / 'not-a-dir'} is a file, not a directory; the gateway would "
        "serve but save no index (the whole catalogue embedded again at every start, nothing learned from use kept)"
    ]
