"""`vmcp validate` of a config with errors also shows the launch warnings it can work out (a backend command not on
PATH, a script that does not exist), of the backends that are valid on their own, under a heading of their own
after the errors: fixing the errors, a user learns now, not on the next run, that a backend would not start.
Real `vmcp validate` processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DEMO_SERVER

pytestmark = pytest.mark.slow

HEADING = "and warnings (what `vmcp serve` could not launch, of the backends that are valid):"


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def test_a_config_with_errors_also_names_the_valid_backends_that_would_not_start(tmp_path: Path) -> None:
    config = tmp_path / "vmcp.yaml"
    config.write_text(
        "server: {port: eighty}\n"
        "backends:\n"
        "  - {name: typo, command: pyhton, args: [-m, mcp_server_time]}\n"
        "  - {name: misspelt, command: pyhton, bogus: 1}\n"  # invalid: reported as an error, not warned of
        "  - {name: script, command: python, args: [missing_server.py]}\n"
        f"  - {{name: fine, command: python, args: [{DEMO_SERVER}]}}\n",
        encoding="utf-8",
    )
    checked = validate(config)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    lines = checked.stderr.splitlines()
    assert lines[0] == f"invalid configuration ({config}):"
    heading = lines.index(HEADING)  # after every error
    errors, warnings = lines[1:heading], lines[heading + 1 :]
    assert any(line.startswith("  server.port:") for line in errors)
    assert any(line.startswith("  backends[1].bogus:") for line in errors)
    assert warnings == [
        "  warning: backends[0].command: 'pyhton' is not found on PATH; the backend would not start",
        f"  warning: backends[2].args[0]: {tmp_path / 'missing_server.py'} does not exist (relative paths start at the "
        "backend's cwd, which is the config file's directory unless `cwd` says otherwise); the backend would not start",
    ]


def test_a_config_with_errors_and_nothing_to_warn_of_prints_only_the_errors(tmp_path: Path) -> None:
    config = tmp_path / "vmcp.yaml"
    config.write_text(
        f"server: {{port: eighty}}\nbackends:\n  - {{name: fine, command: python, args: [{DEMO_SERVER}]}}\n",
        encoding="utf-8",
    )
    checked = validate(config)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "warning" not in checked.stderr
    assert checked.stderr.splitlines()[1].startswith("  server.port:")


# Paths the OS refuses to look up: `Path.resolve` raises on a NUL byte, `exists()` on a name past its length limit.
UNLOOKABLE = [
    {"name": "t", "command": "python", "cwd": "a\u0000b"},
    {"name": "t", "command": "python", "args": ["x" * 5000 + ".py"]},
]


@pytest.mark.parametrize("backend", UNLOOKABLE, ids=["nul-byte-cwd", "long-script"])
@pytest.mark.parametrize("broken", [True, False], ids=["with-errors", "valid"])
def test_a_path_the_os_cannot_look_up_is_a_warning_not_a_traceback(
    tmp_path: Path, backend: dict[str, object], broken: bool
) -> None:
    import json

    config = tmp_path / "vmcp.json"
    document: dict[str, object] = {"backends": [backend]}
    if broken:
        document["server"] = {"port": "x"}
    config.write_text(json.dumps(document), encoding="utf-8")
    done = validate(config)
    assert "Traceback" not in done.stderr, done.stderr[-800:]
    assert done.returncode == (2 if broken else 0), done.stderr[-800:]
    if broken:
        assert "server.port" in done.stderr
    assert "not a path this machine can look up" in done.stderr + done.stdout, done.stderr[-800:]
