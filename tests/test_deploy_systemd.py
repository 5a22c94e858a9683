"""deploy/systemd/vmcp.service as systemd runs it: the unit verifies, its ExecStart flags and Environment start a
real gateway, and a stop the way the unit's KillMode makes systemd do it lets a stdio backend's call in flight
finish (the drain the unit's comments promise), then the gateway exits 0 within TimeoutStopSec. The exit codes
of starts that fail are ones the unit's Restart=/RestartPreventExitStatus= treat as meant: a config error is
not restarted for ever, a start that may succeed later (a port in use, a backend not up yet) is.

No systemd runs here as PID 1, so the stop is done as systemd does it: KillSignal to the main process alone
(KillMode=mixed or process), or to every process of the unit at once (control-group, the default).
"""

from __future__ import annotations

import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.support import EXAMPLES, ROOT, Gateway, free_port, running_gateway, unavailable, write_config

pytestmark = [pytest.mark.slow]

UNIT = ROOT / "deploy" / "systemd" / "vmcp.service"
INSTALLED = "/opt/vmcp-opt/.venv/bin/vmcp"
HELD_SERVER = EXAMPLES / "backends" / "held_server.py"


def service_settings() -> dict[str, list[str]]:
    """The [Service] section: each key with its values in order (Environment= may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def one(settings: dict[str, list[str]], key: str, default: str) -> str:
    return settings.get(key, [default])[-1]


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze is not installed")
    vmcp = Path(sys.executable).with_name("vmcp")
    assert INSTALLED in UNIT.read_text(encoding="utf-8")
    # The install path is this checkout's virtualenv here; everything else as shipped.
    unit = tmp_path / "vmcp.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(INSTALLED, str(vmcp)), encoding="utf-8")
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip() == ""


def stop_as_systemd(gateway: Gateway, kill_mode: str, kill_signal: signal.Signals) -> None:
    """systemd's stop of the unit: KillSignal to the main process, and with control-group to the rest too."""
    others = gateway.children() if kill_mode == "control-group" else []
    gateway.proc.send_signal(kill_signal)
    for process in others:
        process.send_signal(kill_signal)


def test_a_stop_as_the_unit_says_lets_a_stdio_call_in_flight_finish(tmp_path: Path) -> None:
    settings = service_settings()
    [command] = settings["ExecStart"]
    argv = shlex.split(command)
    assert argv[:4] == [INSTALLED, "serve", "-c", "/etc/vmcp/vmcp.yaml"], argv
    state = tmp_path / "state"  # the StateDirectory, /var/lib/vmcp on a host
    environment = {}
    for assignment in settings.get("Environment", []):
        name, _, value = assignment.partition("=")
        environment[name] = value.replace("/var/lib/vmcp", str(state))
    kill_mode = one(settings, "KillMode", "control-group")
    kill_signal = signal.Signals[one(settings, "KillSignal", "SIGTERM")]
    stop_timeout = float(one(settings, "TimeoutStopSec", "90"))
    gate = tmp_path / "gate"
    backend = {"name": "held", "command": sys.executable, "args": [str(HELD_SERVER)]}
    config = write_config(tmp_path, {"backends": [backend]})

    async def main(gateway: Gateway) -> None:
        outcome: list[types.CallToolResult] = []

        async def held_call() -> None:
            async with Client(gateway.url) as client:
                await client.list_tools()  # before the stop: the client checks a result against the listed schema
                outcome.append(await client.call_tool("held_held_echo", {"message": "finished", "gate": str(gate)}))

        async with anyio.create_task_group() as calls:
            calls.start_soon(held_call)
            with anyio.fail_after(60):
                while not await anyio.Path(f"{gate}.started").exists():  # noqa: ASYNC110 - the backend makes it
                    await anyio.sleep(0.05)
            stop_as_systemd(gateway, kill_mode, kill_signal)
            with anyio.fail_after(30):  # the gateway has taken the signal: it is draining
                while "draining" not in gateway.output():  # noqa: ASYNC110 - the gateway writes it
                    await anyio.sleep(0.05)
            gate.touch()
        [result] = outcome
        texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
        assert not result.is_error and texts == ["finished"], (kill_mode, texts)
        code = await anyio.to_thread.run_sync(lambda: gateway.proc.wait(timeout=stop_timeout))
        assert code == 0

    with running_gateway(config, *argv[4:], env=environment) as gateway:
        anyio.run(main, gateway)
    assert "drained in" in gateway.output()


def restarted_by_systemd(settings: dict[str, list[str]], code: int) -> bool:
    """Whether systemd restarts the unit after its main process exits with `code` (Restart=on-failure: any
    non-zero code, unless RestartPreventExitStatus= lists it)."""
    assert one(settings, "Restart", "no") == "on-failure"
    prevented = {int(value) for entry in settings.get("RestartPreventExitStatus", []) for value in entry.split()}
    return code != 0 and code not in prevented


def exit_code_as_the_unit_runs_it(tmp_path: Path, config: Path, *extra: str) -> tuple[int, str]:
    """The unit's ExecStart (this checkout's vmcp) and Environment, on `config`; its exit code and stderr."""
    settings = service_settings()
    [command] = settings["ExecStart"]
    argv = shlex.split(command)
    argv[0] = str(Path(sys.executable).with_name("vmcp"))
    argv[argv.index("-c") + 1] = str(config)
    environment = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    for assignment in settings.get("Environment", []):
        name, _, value = assignment.partition("=")
        environment[name] = value.replace("/var/lib/vmcp", str(tmp_path / "state"))
    done = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=120, env=environment)
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    "config",
    [
        {"server": {"port": "eighty"}},  # invalid config
        {"backends": [], "request_state": {"key_file": "/nonexistent/state-key"}},  # a secret it cannot read
    ],
    ids=["invalid-field", "missing-secret"],
)
def test_a_config_error_is_not_restarted(tmp_path: Path, config: dict[str, object]) -> None:
    code, stderr = exit_code_as_the_unit_runs_it(tmp_path, write_config(tmp_path, config))
    assert code == 2, stderr
    assert not restarted_by_systemd(service_settings(), code), f"exit {code} would be restarted for ever"


def test_a_start_that_may_succeed_later_is_restarted(tmp_path: Path) -> None:
    settings = service_settings()
    with socket.socket() as held:  # the port held by another process: it may be freed
        held.bind(("127.0.0.1", 0))
        held.listen()
        config = write_config(tmp_path, {"backends": []})
        code, stderr = exit_code_as_the_unit_runs_it(tmp_path, config, "--port", str(held.getsockname()[1]))
    assert code == 1 and "already in use" in stderr, stderr
    assert restarted_by_systemd(settings, code)
    # failure.mode: fail and a backend not up yet (nothing listens on that port): it may come up.
    down = {"name": "down", "transport": "streamable-http", "url": f"http://127.0.0.1:{free_port()}/mcp"}
    config = write_config(tmp_path, {"failure": {"mode": "fail"}, "backends": [down]}, name="fail.yaml")
    code, stderr = exit_code_as_the_unit_runs_it(tmp_path, config, "--port", str(free_port()))
    assert code not in (0, 2) and "could not connect" in stderr, (code, stderr)
    assert restarted_by_systemd(settings, code)
