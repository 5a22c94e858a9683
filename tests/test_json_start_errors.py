"""Start-up errors of `vmcp serve` under the json log format: JSON lines on stderr, the exit codes of the plain
format; and `vmcp validate`'s held discovery warning, before its verdict."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import DEMO_SERVER, write_config


def vmcp(*args: str, env: dict[str, str] | None = None, merged: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        encoding="utf-8",
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as a JSON object (fails on any line that is not one)."""
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    return records


def bad_port_config(tmp_path: Path, **server: Any) -> Path:
    return write_config(tmp_path, {"backends": [], "server": {"port": "not-a-port", **server}})


@pytest.mark.parametrize("asked_by", ["flag", "env", "file"])
def test_an_invalid_config_under_json_is_one_error_record_listing_its_problems(tmp_path: Path, asked_by: str) -> None:
    config = bad_port_config(tmp_path, **({"log_format": "json"} if asked_by == "file" else {}))
    flag = ["--log-format", "json"] if asked_by == "flag" else []
    env = {"VMCP_SERVER__LOG_FORMAT": "json"} if asked_by == "env" else {}
    result = vmcp("serve", "-c", str(config), *flag, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [record] = json_lines(result.stderr)
    assert record["level"] == "error" and record["logger"] == "vmcp_opt.cli"
    assert record["config"] == str(config)
    assert [problem.split(":")[0] for problem in record["problems"]] == ["server.port"]
    assert record["message"].startswith(f"invalid configuration ({config}): server.port")


def test_an_invalid_config_in_plain_format_keeps_its_text(tmp_path: Path) -> None:
    config = bad_port_config(tmp_path)
    result = vmcp("serve", "-c", str(config), "--log-format", "plain")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"invalid configuration ({config}):"
    assert [line.split(":")[0] for line in lines[1:]] == ["  server.port"]


def test_a_bad_log_format_flag_is_reported_as_text(tmp_path: Path) -> None:
    # The flag does not ask for json: the file's json is overridden by it, so the report is the plain one.
    config = bad_port_config(tmp_path, log_format="json")
    result = vmcp("serve", "-c", str(config), "--log-format", "xml")
    assert result.returncode == 2
    assert result.stderr.startswith(f"invalid configuration ({config}):")
    assert "server.log_format (from --log-format)" in result.stderr


def test_a_port_in_use_under_json_is_an_error_record_with_the_exit_code_of_plain(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": []})
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = vmcp("serve", "-c", str(config), "--port", str(port), "--log-format", "json")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    [record] = [r for r in json_lines(result.stderr) if r["level"] == "error"]
    assert record["message"].startswith(f"cannot listen on 127.0.0.1:{port}: the port is already in use")
    assert record["port"] == port and record["host"] == "127.0.0.1" and record["setting"] == "server.port"


def test_validate_prints_the_held_discovery_warning_before_its_verdict(tmp_path: Path) -> None:
    client_file = tmp_path / "claude_desktop_config.json"
    servers = {"notes": {"command": sys.executable, "args": [str(DEMO_SERVER)]}, "vmcp": {"command": "vmcp"}}
    client_file.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    config = write_config(tmp_path, {"discovery": {"mode": "discovered", "path": str(client_file)}})
    result = vmcp("validate", "-c", str(config), merged=True)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    skipped = next(i for i, line in enumerate(lines) if "skipping 'vmcp'" in line)
    verdict = next(i for i, line in enumerate(lines) if line.startswith("valid: 1 backend "))
    assert skipped < verdict
    # as Python's last-resort handler writes it: the message alone, as before
    assert lines[skipped].startswith("discovery: skipping 'vmcp'")
