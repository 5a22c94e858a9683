"""What a command loads before it has done its job: `vmcp validate` never the MCP SDK (~0.4 s: it resolves stdio
launches with backends/launch.py, and `vmcp_opt.backends` loads its connection code on first use); `vmcp serve
--stdio` without the optimizer neither numpy nor faiss (~0.1 s, the optimizer's) by the time it has answered its
first tools/list, and its backends' code not psutil (wanted only to end what a stopped backend left behind).
Real processes: the `vmcp` entry point, and a real gateway over a real stdio backend asked over its stdin."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support import EXAMPLES, demo_backend, stdio_gateway, wait_until, write_config

ROOT = Path(__file__).resolve().parent.parent

# `vmcp <args>` as its script runs it, then the `mcp` modules the process holds.
RUN_AND_REPORT = """
import json, sys
sys.argv = ["vmcp", *sys.argv[1:]]
from vmcp_opt.cli import app
try:
    app()
except SystemExit as done:
    code = done.code or 0
else:
    code = 0
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "mcp")
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def run_vmcp(*args: str) -> tuple[int, str, list[str]]:
    """Exit code, stdout and stderr together, and the `mcp` modules loaded of one `vmcp <args>` process."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    *said, last = done.stderr.strip().splitlines()
    report = json.loads(last)
    return report["code"], done.stdout + "\n".join(said), report["loaded"]


def test_validate_checks_the_demo_s_launches_without_loading_the_mcp_sdk() -> None:
    code, stdout, loaded = run_vmcp("validate", "-c", str(EXAMPLES / "demo.yaml"))
    assert code == 0 and stdout.startswith("valid: 7 backends"), (code, stdout)
    assert loaded == [], loaded


def test_validate_still_warns_of_a_missing_script_without_loading_the_mcp_sdk(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [{"name": "gone", "command": sys.executable, "args": ["gone.py"]}]})
    code, stdout, loaded = run_vmcp("validate", "-c", str(config))
    assert code == 0 and f"backends[0].args[0]: {tmp_path / 'gone.py'} does not exist" in stdout, stdout
    assert loaded == [], loaded


# First on the gateway's `sys.path`: records, for each watched module, the thread and the `vmcp_opt` module that
# first imported it; on SIGUSR1 a process that imported the gateway writes that, for each one it holds, to
# `<pid>.modules` beside this file.
WATCHED = ("numpy", "faiss", "psutil")
SITECUSTOMIZE = """
import json, os, signal, sys, threading

WATCHED = __WATCHED__
first = {}

def _importer():
    frame = sys._getframe(2)
    while frame is not None and not frame.f_globals.get("__name__", "").startswith("vmcp_opt"):
        frame = frame.f_back
    return frame.f_globals["__name__"] if frame is not None else "?"

class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name in WATCHED and name not in first:
            first[name] = f"{threading.current_thread().name} {_importer()}"
        return None

sys.meta_path.insert(0, Recorder())

def _modules(signum, frame):
    if "vmcp_opt.gateway" in sys.modules:
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{os.getpid()}.modules")
        loaded = {name: first.get(name, "?") for name in WATCHED if name in sys.modules}
        with open(out + ".tmp", "w", encoding="utf-8") as f:
            json.dump(loaded, f)
        os.replace(out + ".tmp", out)

signal.signal(signal.SIGUSR1, _modules)
""".replace("__WATCHED__", repr(WATCHED))

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def _send(pipe: IO[bytes], *messages: dict[str, Any]) -> None:
    pipe.write(b"".join(json.dumps(message).encode() + b"\n" for message in messages))
    pipe.flush()


def _answer(out: IO[bytes], wanted: int) -> dict[str, Any]:
    """The answer to request `wanted`, notifications skipped; read on a thread, so a silent gateway fails the
    test at a generous deadline rather than hanging it."""
    lines: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def read() -> None:
        for raw in iter(out.readline, b""):
            lines.put(raw)
            if json.loads(raw).get("id") == wanted:
                return
        lines.put(b"")

    threading.Thread(target=read, daemon=True).start()
    while True:
        raw = lines.get(timeout=60)
        assert raw, "the gateway ended its stdout"
        message: dict[str, Any] = json.loads(raw)
        if message.get("id") == wanted:
            return message


@pytest.mark.skipif(sys.platform == "win32", reason="SIGUSR1 asks the gateway for its modules")
def test_serve_stdio_answers_its_first_tools_list_without_numpy_faiss_or_the_backends_psutil(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(hook), os.environ.get("PYTHONPATH")))))
    # The optimizer off (write_config's default): with it on, its index needs numpy and faiss from the start.
    config = write_config(tmp_path, {"backends": [demo_backend("demo")]})
    with stdio_gateway(config, tmp_path / "stderr.log") as gateway:
        assert gateway.stdin is not None and gateway.stdout is not None
        _send(gateway.stdin, INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        _send(gateway.stdin, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        answer = _answer(gateway.stdout, 2)
        assert "demo_slow_echo" in [tool["name"] for tool in answer["result"]["tools"]], answer
        dump = hook / f"{gateway.pid}.modules"
        gateway.send_signal(signal.SIGUSR1)
        wait_until(dump.exists, deadline=20, message="the gateway wrote no list of its modules")
    loaded: dict[str, str] = json.loads(dump.read_text(encoding="utf-8"))
    assert "numpy" not in loaded and "faiss" not in loaded, loaded
    # Not by the backends' code on the way to this answer (their zombie sweep may want it by now, on its own
    # thread). server/http.py's own import of it, for a wildcard bind's names, is not the backends'.
    psutil = loaded.get("psutil")
    assert psutil is None or psutil.startswith("stdio-zombie-sweep "), loaded
