"""Server names that the desktop clients accept side by side but that come out the same as backend names (`my
server` and `my-server`, two names in other scripts): all of them are served. A real `vmcp serve --stdio`
process in discovered mode, real stdio backends, the client's lines by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import DEMO_SERVER, write_config


def test_servers_whose_names_come_out_the_same_are_all_served_under_distinct_names(tmp_path: Path) -> None:
    client_file = tmp_path / "claude_desktop_config.json"
    demo = {"command": sys.executable, "args": [str(DEMO_SERVER)]}
    client_file.write_text(json.dumps({"mcpServers": {"my server": demo, "my-server": demo}}), encoding="utf-8")
    config = write_config(tmp_path, {"discovery": {"mode": "discovered", "path": str(client_file)}})
    client = {"name": "test", "version": "1"}
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client}
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    result = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "serve", "--stdio", "-c", str(config)],
        input=b"".join(json.dumps(request).encode() + b"\n" for request in requests),
        capture_output=True,
        timeout=120,
    )
    log = result.stderr.decode(errors="replace")
    assert result.returncode == 0, log
    [tools] = [json.loads(line) for line in result.stdout.splitlines() if b'"id":2' in line]
    names = {tool["name"] for tool in tools["result"]["tools"]}
    # The name the file spells as served keeps it; the other is numbered, and the log says which is which.
    assert {"my-server_save_note", "my-server-2_save_note"} <= names, names
    assert "server 'my server' in " in log and "is served as 'my-server-2'" in log
