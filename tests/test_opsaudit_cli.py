"""The `vmcp` command where its output meets what it does not control: text a backend or a credential
supplies, a terminal of 80 columns, a stdout whose reader is gone, a stdio gateway started without its pipes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest

from tests.support import api_keys_file, demo_backend, free_port, stop_process, wait_http, write_config

# A backend that dies at once, its last stderr line holding what rich reads as markup.
CRASHING = 'import sys\nsys.stderr.write("fatal: cannot open [/etc/vmcp] [bold]now\\n")\nsys.exit(3)\n'
STDERR_LINE = "fatal: cannot open [/etc/vmcp] [bold]now"

pytestmark = pytest.mark.slow  # each starts `vmcp` with backends, or a gateway


def vmcp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def crashing_config(tmp_path: Path) -> Path:
    (tmp_path / "crash.py").write_text(CRASHING)
    return write_config(tmp_path, {"backends": [{"name": "crash", "command": sys.executable, "args": ["crash.py"]}]})


def test_backends_prints_a_failed_backends_stderr_line_as_written_not_as_markup(tmp_path: Path) -> None:
    result = vmcp("backends", "-c", str(crashing_config(tmp_path)))
    assert result.returncode == 1, result.stderr  # a backend not ready
    assert "Traceback" not in result.stdout + result.stderr
    assert STDERR_LINE in result.stdout


def test_backends_in_an_80_column_terminal_shows_each_name_state_and_whole_error(tmp_path: Path) -> None:
    output = in_terminal(["backends", "-c", str(crashing_config(tmp_path))], columns=80)
    lines = [line.rstrip() for line in output.splitlines()]
    assert "crash: failed, unhealthy (stdio)" in lines, output
    assert STDERR_LINE in " ".join(output.split()), output  # soft-wrapped by the terminal, never cut


def test_auth_check_shows_a_subject_that_looks_like_markup_as_written(tmp_path: Path) -> None:
    keys = api_keys_file(tmp_path / "keys.json", {"[/ops]": []})
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes")],
            "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        },
    )
    result = vmcp("auth", "check", "-c", str(config), env={"VMCP_CREDENTIAL": keys["[/ops]"]})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tools for [/ops]" in result.stdout and "notes_save_note" in result.stdout


def test_serve_keeps_serving_when_the_reader_of_its_stdout_is_gone(tmp_path: Path) -> None:
    """`vmcp serve | head -1`, or a supervisor that stops reading: the banner is lost, the gateway is not."""
    port = free_port()
    config = write_config(tmp_path, {"backends": []})
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(config), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    assert proc.stdout is not None
    proc.stdout.close()  # before the gateway writes anything: its banner meets a broken pipe
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        warned = wait_for(lambda: "start-up banner not written to stdout" in log.read_text(), proc)
        assert warned, log.read_text()
        assert httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        assert proc.poll() is None
    finally:
        stop_process(proc)
    assert proc.returncode == 0 and "Traceback" not in log.read_text(), log.read_text()


def test_serve_stdio_without_stdin_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": []})
    result = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(0),  # started as `vmcp serve --stdio <&-`
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "cannot serve over stdio: stdin is closed" in result.stderr


def test_serve_stdio_without_stdin_is_one_json_record_under_json_logs(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": []})
    result = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config), "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(0),
    )
    assert result.returncode == 2, result.stderr
    [record] = [json.loads(line) for line in result.stderr.splitlines()]
    assert record["level"] == "error" and "stdin is closed" in record["message"]


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    """Polls `condition` until it holds, the process ends or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def in_terminal(args: list[str], columns: int) -> str:
    """What `vmcp <args>` shows in a terminal window `columns` wide (a pseudo-terminal on stdout and stderr)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}  # dumb: no colours to strip
    proc = subprocess.Popen([sys.executable, "-m", "vmcp_opt", *args], stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command ended and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=120)
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
