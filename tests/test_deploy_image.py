"""deploy/Dockerfile's ENTRYPOINT and CMD, run as the container would (the image is not built here: the init
it names from this host's Debian package, `vmcp` from this checkout): a stdio backend that leaves an orphan
behind has it adopted and reaped under the entry process, and SIGTERM to the entry process still drains the
gateway, which exits 0.

On Linux the gateway is the subreaper of its backends' orphans (backends/stdio.py), so it adopts and reaps them;
the init in front (PID 1 in the container, here an ordinary process made a reaper by its own flag, tini -s) reaps
what the gateway leaves at its exit, and forwards SIGTERM. A missing init fails the test.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import DEMO_SERVER, free_port, stop_process, unavailable, wait_http, write_config
from tests.test_deploy_manifests import dockerfile

pytestmark = [pytest.mark.slow]

# A stdio backend that forks a child which forks a grandchild and exits: the grandchild, orphaned, waits until
# it is re-parented, writes its pid and its new parent's, and exits. Then the demo server runs as usual.
ORPHANING_BACKEND = """
import os, runpy, sys, time
report, demo = sys.argv[1], sys.argv[2]
middle = os.fork()
if middle == 0:
    parent = os.getpid()
    if os.fork() == 0:
        while os.getppid() == parent:
            time.sleep(0.01)
        with open(report + ".tmp", "w") as out:
            out.write(f"{os.getpid()} {os.getppid()}")
        os.rename(report + ".tmp", report)
        os._exit(0)
    os._exit(0)
os.waitpid(middle, 0)
sys.argv = [demo]
runpy.run_path(demo, run_name="__main__")
"""


def image_command() -> tuple[list[str], list[str]]:
    instructions = dict(dockerfile())
    return json.loads(instructions["ENTRYPOINT"]), json.loads(instructions["CMD"])


def test_the_entrypoint_is_an_init_the_image_installs_in_front_of_vmcp() -> None:
    entrypoint, command = image_command()
    init = Path(entrypoint[0]).name
    assert entrypoint[-1] == "vmcp" and init != "vmcp", entrypoint
    installs = " ".join(arguments for instruction, arguments in dockerfile() if instruction == "RUN")
    assert "apt-get install" in installs and f" {init} " in f"{installs} ", installs
    # Not -g: the signal goes to the gateway alone, which drains, then stops its backends itself.
    assert "-g" not in entrypoint, entrypoint
    assert command[:2] == ["serve", "-c"], command


def children(pid: int) -> list[int]:
    found: list[int] = []
    for thread in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (thread / "children").read_text(encoding="ascii").split()]
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def zombie_state(pid: int) -> str | None:
    """The process's state letter (Z: exited, not reaped); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def test_an_orphan_of_a_stdio_backend_is_reaped_and_sigterm_still_drains(tmp_path: Path) -> None:
    entrypoint, command = image_command()
    init = entrypoint[0]
    if not Path(init).exists():
        unavailable(f"{init} is not installed (apt-get install {Path(init).name})")
    backend_script = tmp_path / "orphaning_backend.py"
    backend_script.write_text(ORPHANING_BACKEND, encoding="utf-8")
    report = tmp_path / "orphan"
    backend = {"name": "demo", "command": sys.executable, "args": [str(backend_script), str(report), str(DEMO_SERVER)]}
    config = write_config(tmp_path, {"backends": [backend]})
    vmcp = str(Path(sys.executable).with_name("vmcp"))
    argv = [*entrypoint[:-1], vmcp, *command[:2], str(config), *command[3:], "--port", str(port := free_port())]
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
        deadline = time.monotonic() + 30
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        orphan, adopter = (int(n) for n in report.read_text(encoding="utf-8").split())
        gateways = [pid for pid in children(proc.pid) if "vmcp" in command_line(pid)]
        assert adopter in (proc.pid, *gateways), (adopter, proc.pid, gateways)  # the gateway under the init, or it
        deadline = time.monotonic() + 30
        while zombie_state(orphan) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert zombie_state(orphan) is None, f"the orphan {orphan} was not reaped ({zombie_state(orphan)})"
        # SIGTERM to the container's main process reaches the gateway: it drains and exits 0, and so does the init.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        assert "draining" in log.read_text(encoding="utf-8", errors="replace")
    finally:
        stop_process(proc)
