"""The catalogue a running gateway saves for `vmcp index` (`catalogue.json`) is saved only when every configured
backend is connected, and a connected backend that serves no tools does not count as missing.

The gateway saved on every change of its catalogue: started while a backend was down, it overwrote the saved
catalogue with the others' tools only, and `vmcp index stats|search` then showed that part as the whole. And
`vmcp index` took a backend that connected but serves no tools for one that failed, so it never saved at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import demo_backend, free_port, http_demo_backend, running_gateway, write_config
from vmcp_opt.optimizer.listing import LISTING_FILE

pytestmark = [pytest.mark.slow]

VMCP = Path(sys.executable).parent / "vmcp"  # the console script, as an operator runs it
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
# A stdio MCP server that connects and lists no tools.
NO_TOOLS_SERVER = "from mcp.server.mcpserver import MCPServer\n\nMCPServer('no-tools').run()\n"
NOT_UPDATED = "not updated for `vmcp index`"


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VMCP), *args], capture_output=True, text=True, timeout=120, check=False, env=ENV)


def saved_names(index_dir: Path) -> set[str]:
    """The tool names in the saved catalogue; none while there is no (whole) file."""
    try:
        data = json.loads((index_dir / LISTING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {tool["name"] for tool in data["tools"]}


def wait_saved(index_dir: Path, names: set[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not names <= saved_names(index_dir):
        assert time.monotonic() < deadline, f"{sorted(names)} never saved in {index_dir / LISTING_FILE}"
        time.sleep(0.05)


def config_of(tmp_path: Path, backends: list[dict[str, Any]], index_dir: Path) -> Path:
    # Quick retries: the backend started later in a test joins within a second or two.
    failure = {"restart": {"initial_delay": 0.2, "max_delay": 1.0}}
    optimizer = {"enabled": True, "index_dir": str(index_dir)}
    return write_config(tmp_path, {"backends": backends, "optimizer": optimizer, "failure": failure})


def test_a_gateway_started_while_a_backend_is_down_keeps_the_whole_catalogue_saved(tmp_path: Path) -> None:
    index_dir, port = tmp_path / "idx", free_port()
    remote = {"name": "remote", "url": f"http://127.0.0.1:{port}/mcp", "transport": "streamable-http"}
    config = config_of(tmp_path, [demo_backend("local"), remote], index_dir)
    both = {"local_save_note", "remote_save_note"}
    with http_demo_backend(port), running_gateway(config):
        wait_saved(index_dir, both)
    complete = saved_names(index_dir)

    # A later start with `remote` down: the gateway lists `local` alone (its catalogue is built before
    # /readyz leaves "starting", which `running_gateway` waits for), and must keep the whole saved one.
    with running_gateway(config) as gateway:
        assert saved_names(index_dir) == complete
        found = vmcp("index", "search", "save a note", "--keyword", "-c", str(config))
        assert found.returncode == 0, found.stderr
        assert "remote_save_note" in found.stdout and "last listed them" in found.stderr
        log = gateway.output()
        assert f"{NOT_UPDATED}: backend(s) remote not connected" in log, log
        assert log.count(NOT_UPDATED) == 1, log  # said once, not at every change

        # Once `remote` is back and listed, the gateway saves again (the file removed to see the new save).
        (index_dir / LISTING_FILE).unlink()
        with http_demo_backend(port):
            wait_saved(index_dir, both)
    assert saved_names(index_dir) == complete


def test_a_backend_serving_no_tools_does_not_keep_the_catalogue_from_being_saved(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    script = tmp_path / "no_tools_server.py"
    script.write_text(NO_TOOLS_SERVER, encoding="utf-8")
    empty = {"name": "empty", "command": sys.executable, "args": [str(script)]}
    config = config_of(tmp_path, [demo_backend("local"), empty], index_dir)

    stats = vmcp("index", "stats", "-c", str(config))
    assert stats.returncode == 0, stats.stderr
    assert "was not updated" not in stats.stderr
    assert "local_save_note" in saved_names(index_dir)

    (index_dir / LISTING_FILE).unlink()
    with running_gateway(config) as gateway:
        assert "local_save_note" in saved_names(index_dir)  # saved before /readyz left "starting"
        assert NOT_UPDATED not in gateway.output()
