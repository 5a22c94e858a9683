"""`vmcp config-docs` on ordinary I/O errors: one line naming the path and the cause, exit 2, never a traceback;
the file is written whole or not at all (a real `vmcp` process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

VMCP = [sys.executable, "-m", "vmcp_opt"]


def config_docs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMCP, "config-docs", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("target", ["adir", "afile/x.md"])
def test_an_output_that_cannot_be_written_is_one_line_and_exit_2(tmp_path: Path, target: str) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("kept", encoding="utf-8")
    done = config_docs("-o", target, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and f"config-docs: {target}:" in done.stderr
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "kept"
    assert not [p for p in tmp_path.rglob("*.tmp")], "a temporary file was left behind"


def test_a_full_stdout_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*VMCP, "config-docs"], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120
        )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "config-docs: stdout: No space left on device" in done.stderr


def test_written_and_checked(tmp_path: Path) -> None:
    assert config_docs("-o", "docs/configuration.md", cwd=tmp_path).returncode == 0
    assert config_docs("--check", "-o", "docs/configuration.md", cwd=tmp_path).returncode == 0
