"""The Claude Desktop snippet that `vmcp serve` prints must launch this gateway over stdio wherever the package is
installed: with no `vmcp` script beside the interpreter (`pip install --user`, a system Python) too. A real
gateway process prints it; the snippet's own command is then run as a desktop client runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support import demo_backend, stop_process, write_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(sys.platform == "win32", reason="a symlinked interpreter")
def test_the_banner_snippet_launches_the_gateway_when_no_vmcp_script_is_beside_python(tmp_path: Path) -> None:
    # An interpreter in a directory without the `vmcp` script; the packages reach it as a user site would.
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])}
    config = write_config(tmp_path, {"backends": [demo_backend("demo")]})
    gateway = subprocess.Popen(
        [str(bare / "python3"), "-m", "vmcp_opt", "serve", "-c", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert gateway.stdout is not None
        line = b""
        while b"mcpServers" not in line:
            line = gateway.stdout.readline()
            assert line, "the gateway ended before its banner"
    finally:
        stop_process(gateway)
    launch = json.loads(line)["mcpServers"]["vmcp"]
    assert Path(launch["command"]).exists(), launch
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    served = subprocess.run(
        [launch["command"], *launch["args"]],
        input=json.dumps(initialize).encode() + b"\n",
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert json.loads(served.stdout.splitlines()[0])["result"]["serverInfo"]["name"] == "vmcp-opt"
