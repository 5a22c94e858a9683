"""The `vmcp` command on input it cannot use: one line that says what to do, a non-zero exit, never a traceback.

(Config files and models: test_config.py; `vmcp index --from-jsonl`: test_optimizer_cli.py.)"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support import demo_backend, stop_process, wait_http, write_config
from vmcp_opt.config import load_config
from vmcp_opt.server.runner import run_gateway

NOT_HERE = "192.0.2.1"  # TEST-NET-1 (RFC 5737): documentation only, never a local address


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=120)


def no_traceback(result: subprocess.CompletedProcess[str]) -> bool:
    return "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_validate_connect_names_each_backend_that_did_not_connect_and_exits_1(tmp_path: Path) -> None:
    broken = {"name": "broken", "command": "definitely-not-a-command-xyz"}
    path = write_config(tmp_path, {"backends": [broken, demo_backend("notes")]})
    assert vmcp("validate", "-c", str(path)).returncode == 0  # offline, the file alone is valid
    result = vmcp("validate", "--connect", "-c", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert no_traceback(result) and "valid" not in result.stdout
    lines = result.stderr.splitlines()
    assert lines[0] == "backends that did not connect (1 of 2):"
    assert lines[1] == "  broken: command not found on PATH: 'definitely-not-a-command-xyz'"
    assert not any("notes" in line for line in lines)


@pytest.mark.parametrize("subject", ["", "   "])
def test_new_key_refuses_an_empty_subject_before_making_a_key(subject: str) -> None:
    result = vmcp("auth", "new-key", "--subject", subject)
    assert result.returncode == 2 and no_traceback(result)
    assert result.stdout == ""  # no key printed, no entry the gateway would refuse at start
    assert result.stderr.splitlines() == [
        "--subject: give who the key belongs to (e.g. --subject alice); it cannot be empty"
    ]


@pytest.mark.slow
def test_serve_on_port_0_announces_the_port_the_os_chose(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        command = [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(write_config(tmp_path, {})), "--port", "0"]
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while (banner := re.search(r"serving MCP at http://127\.0\.0\.1:(\d+)/mcp", log.read_text())) is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        port = int(banner.group(1))
        assert port != 0
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)  # the announced port is the one served
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_the_banners_urls_on_a_wildcard_bind_and_a_root_path_are_ones_a_user_can_open(tmp_path: Path) -> None:
    # Bound to 0.0.0.0 the banner showed http://0.0.0.0:…, which the Host check refuses (421), and with
    # `server.path: /` its health URL read `http:/healthz/healthz127.0.0.1:…`.
    config = {"server": {"path": "/"}, "auth": {"incoming": {"allow_anonymous_remote": True}}}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        command = [sys.executable, "-m", "vmcp_opt", "serve", "-c", str(write_config(tmp_path, config))]
        proc = subprocess.Popen([*command, "--host", "0.0.0.0", "--port", "0"], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while (banner := re.search(r"health: (\S+)\s+readiness: (\S+)", log.read_text())) is None:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        health, readiness = banner.groups()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/healthz", health), health
        assert readiness == health.replace("/healthz", "/readyz")
        assert re.search(r"serving MCP at http://127\.0\.0\.1:\d+/ ", log.read_text()), log.read_text()
        wait_http(health, proc=proc)  # answered, not refused 421
    finally:
        stop_process(proc)


@pytest.mark.parametrize("port", ["8000", "0"])
def test_serve_on_an_address_not_of_this_machine_points_at_host_not_port(tmp_path: Path, port: str) -> None:
    if any(a.address == NOT_HERE for addresses in psutil.net_if_addrs().values() for a in addresses):
        pytest.skip(f"{NOT_HERE} is an address of this machine")
    path = write_config(tmp_path, {"auth": {"incoming": {"allow_anonymous_remote": True}}})
    result = vmcp("serve", "-c", str(path), "--host", NOT_HERE, "--port", port)
    assert result.returncode == 2 and no_traceback(result)
    assert result.stderr.splitlines() == [
        f"cannot listen on {NOT_HERE}:{port}: {NOT_HERE} is not an address of this machine; choose one of its "
        "own with --host (server.host), or 0.0.0.0 for every interface"
    ]


def test_run_gateway_refuses_a_model_that_does_not_resolve_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `vmcp` checks the model at load; a caller of `run_gateway` that did not gets a clean refusal too.
    config = load_config(write_config(tmp_path, {"optimizer": {"enabled": True, "model": "nosuchmodel"}}))
    with caplog.at_level(logging.ERROR):
        assert run_gateway(config) == 2
    assert "cannot start: optimizer.model: model 'nosuchmodel': not a registry id" in caplog.text


@pytest.mark.parametrize(
    ("redis", "named"),
    [
        ({"password_env": "VMCP_TEST_UNSET_PW"}, "redis.password_env: the environment variable VMCP_TEST_UNSET_PW"),
        ({"password_file": "missing-pw.txt"}, "redis.password_file: cannot read"),
    ],
)
def test_sessions_in_redis_without_its_password_are_refused_naming_the_setting(
    tmp_path: Path, redis: dict[str, str], named: str
) -> None:
    path = write_config(tmp_path, {"backends": [demo_backend("notes")], "redis": redis, "sessions": {"store": "redis"}})
    checked = vmcp("validate", "-c", str(path))
    assert checked.returncode == 2 and named in checked.stdout + checked.stderr, checked.stdout + checked.stderr
    served = vmcp("serve", "-c", str(path), "--port", "0")
    assert served.returncode == 2 and no_traceback(served), served.stderr
    assert f"cannot start: {named}" in served.stderr
