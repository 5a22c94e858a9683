"""A gateway that discovers its own entry in the client config it reads (the user added vmcp to Claude Desktop,
then pointed vmcp at Claude Desktop's file). A visible entry (`uv run vmcp`, `uvx vmcp-opt`) is skipped; one
behind a wrapper starts a gateway that must refuse to start rather than start the next one, without end. Real
`vmcp serve --stdio` processes, a real stdio backend, the client config file on disk."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support import DEMO_SERVER, stdio_gateway, write_config
from vmcp_opt.backends.discovery import read_client_config

pytestmark = pytest.mark.slow


def send(pipe: IO[bytes], message: dict[str, Any]) -> None:
    pipe.write(json.dumps(message).encode() + b"\n")
    pipe.flush()


def wrapped_gateway(tmp_path: Path, config: Path, launches: Path, most: int) -> dict[str, Any]:
    """An entry that runs this gateway through `sh -c`, which hides its command; the shell counts its launches and
    refuses past `most`, so that a test of a broken guard ends instead of filling the machine with gateways."""
    gateway = shlex.join([sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)])
    count = shlex.quote(str(launches))
    script = (
        f"n=$(cat {count} 2>/dev/null || echo 0); [ $n -ge {most} ] && exit 1; echo $((n+1)) > {count}; exec {gateway}"
    )
    return {"command": "sh", "args": ["-c", script], "cwd": str(tmp_path)}


def test_a_gateway_started_from_its_own_client_config_refuses_and_is_reported_down(tmp_path: Path) -> None:
    client_file = tmp_path / "claude_desktop_config.json"
    config = write_config(tmp_path, {"discovery": {"mode": "discovered", "path": str(client_file)}})
    launches = tmp_path / "launches"
    servers = {
        "notes": {"command": sys.executable, "args": [str(DEMO_SERVER)]},
        "gateway": wrapped_gateway(tmp_path, config, launches, most=2),
    }
    client_file.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    stderr = tmp_path / "stderr.log"
    with stdio_gateway(config, stderr) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        client = {"name": "test", "version": "1"}
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client}
        send(proc.stdin, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
        send(proc.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        send(proc.stdin, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        answers = [json.loads(proc.stdout.readline()) for _ in range(2)]
        deadline = time.monotonic() + 30
        while "without end" not in stderr.read_text(encoding="utf-8") and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.stdin.close()
        proc.wait(timeout=30)
    log = stderr.read_text(encoding="utf-8")
    assert answers[1]["id"] == 2
    names = {tool["name"] for tool in answers[1]["result"]["tools"]}
    assert "notes_save_note" in names and not any(name.startswith("gateway_") for name in names), names
    # The gateway the wrapper started said why it would not serve; its parent logged that as the backend's failure.
    assert f"discovery.path: {client_file}: this gateway was started from one of this file's servers" in log
    assert "backend gateway failed" in log


@pytest.mark.parametrize(
    "entry",
    [
        {"command": "uv", "args": ["--directory", "/home/me/vmcp-opt", "run", "vmcp", "serve", "--stdio"]},
        {"command": "uvx", "args": ["vmcp-opt@0.1.0", "serve", "--stdio"]},
        {"command": "uvx", "args": ["--from", "vmcp-opt==0.1.0", "vmcp", "serve", "--stdio"]},
        {"command": "/usr/bin/env", "args": ["vmcp", "serve", "--stdio"]},
        {"command": "python3", "args": ["/home/me/vmcp-opt/.venv/bin/vmcp", "serve", "--stdio"]},
    ],
)
def test_the_usual_launchers_of_this_gateway_are_skipped(tmp_path: Path, entry: dict[str, Any]) -> None:
    client_file = tmp_path / "mcp.json"
    others = {"time": {"command": "uvx", "args": ["mcp-server-time"]}}
    client_file.write_text(json.dumps({"servers": {"gw": entry, **others}}), encoding="utf-8")
    assert [backend.name for backend in read_client_config(client_file)] == ["time"]
