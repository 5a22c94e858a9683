"""deploy/kubernetes/redis.yaml's start command, run for real: the container's shell snippet as the manifest
gives it (with /bin/sh, and with busybox's, the shell of redis:7-alpine), a real redis-server behind it.

The password must never be in an argv: whatever `exec`s redis-server is recorded by a shim put first on PATH
(exactly what an exec audit sees), and the running server's /proc/<pid>/cmdline and environ are read too.
Redis then asks for that password, and keeps its memory under the container's limit.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support import ROOT, free_port, unavailable

MANIFEST = ROOT / "deploy" / "kubernetes" / "redis.yaml"
# Bytes redis's config parser would cut at (space), end a string at (quote) or take as a directive (newline).
PASSWORD = b"p@ss \"word\" 'with' spaces\t$HOME `id` \\x41 #end"


def redis_container() -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = next(yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")))
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return pod, container


def mounted_password_path() -> str:
    """Where the pod mounts the Secret's redis-password: the path the command must read."""
    pod, container = redis_container()
    [mount] = container["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    [item] = volume["secret"]["items"]
    assert item["key"] == "redis-password"
    return f"{mount['mountPath']}/{item['path']}"


def memory_limit_bytes() -> int:
    _, container = redis_container()
    limit = container["resources"]["limits"]["memory"]
    units = {"Mi": 2**20, "Gi": 2**30}
    return int(limit[:-2]) * units[limit[-2:]]


def shells() -> list[str]:
    return ["sh", "busybox"]


def shell_path(tmp_path: Path, shell: str) -> tuple[list[str], str]:
    """The shell the manifest names (`sh`) and the PATH it runs with: /bin/sh here; for `busybox`, its sh with
    busybox's od, tr, sed and cat first on PATH, as in redis:7-alpine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if shell == "busybox":
        busybox = shutil.which("busybox")
        if busybox is None:
            unavailable("busybox is not installed (apt-get install busybox)")
        for applet in ("sh", "od", "tr", "sed", "cat"):
            (bin_dir / applet).symlink_to(busybox)
        return [str(bin_dir / "sh")], str(bin_dir)
    return ["sh"], str(bin_dir)


def install_recording_shim(bin_dir: Path, argv_log: Path, port: int) -> None:
    """A `redis-server` that records the argv it was exec'd with, then runs the real one on a loopback port."""
    real = shutil.which("redis-server")
    if real is None:
        unavailable("redis-server is not installed (scripts/setup.sh dev installs it when run as root)")
    shim = bin_dir / "redis-server"
    shim.write_text(
        f'#!/bin/sh\nprintf \'%s\\0\' "$0" "$@" > \'{argv_log}\'\nexec {real} "$@" --port {port} --bind 127.0.0.1\n',
        encoding="utf-8",
    )
    shim.chmod(0o755)


@contextlib.contextmanager
def manifest_redis(tmp_path: Path, shell: str, password: bytes) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The manifest's command with the Secret's file at a temporary path; the process and its port."""
    _, container = redis_container()
    command = container["command"]
    assert command[:2] == ["sh", "-c"], command
    secret = tmp_path / "redis-password"
    secret.write_bytes(password)
    script = command[2]
    assert mounted_password_path() in script
    shell_argv, bin_dir = shell_path(tmp_path, shell)
    port = free_port()
    install_recording_shim(Path(bin_dir), tmp_path / "argv", port)
    env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "LANG": "C"}
    proc = subprocess.Popen(
        [*shell_argv, "-c", script.replace(mounted_password_path(), str(secret))],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "stderr").open("wb"),
        env=env,
    )
    try:
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the command exited with {proc.returncode}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError("redis-server did not listen")


def client(port: int, password: str | None) -> redis.Redis:
    """No retries: a refused AUTH is the answer, not a reason to back off and try again."""
    return redis.Redis(host="127.0.0.1", port=port, password=password, retry=Retry(NoBackoff(), 0))


@pytest.mark.parametrize("shell", shells())
def test_the_password_reaches_redis_but_no_command_line(tmp_path: Path, shell: str) -> None:
    with manifest_redis(tmp_path, shell, PASSWORD + b"\n") as (proc, port):
        wait_listening(proc, port)
        exec_argv = (tmp_path / "argv").read_bytes()
        # Its only argument is `-` (config on stdin): no part of the password, nor its hex escapes.
        assert exec_argv.split(b"\0")[1:] == [b"-", b""], exec_argv
        assert b"p@ss" not in exec_argv and b"\\x70" not in exec_argv, exec_argv
        # `exec`: redis-server is the container's main process (it takes SIGTERM), not a child of sh.
        assert "redis" in Path(f"/proc/{proc.pid}/exe").resolve().name
        for view in ("cmdline", "environ"):
            assert b"p@ss" not in Path(f"/proc/{proc.pid}/{view}").read_bytes(), view
        # The file's trailing newline is dropped, as the gateway reads redis.password_file.
        with client(port, PASSWORD.decode()) as authed:
            assert authed.ping() is True
            maxmemory = int(authed.config_get("maxmemory")["maxmemory"])
            assert 0 < maxmemory < memory_limit_bytes()
        with pytest.raises(redis.AuthenticationError), client(port, None) as anonymous:
            anonymous.ping()
        with pytest.raises(redis.AuthenticationError), client(port, "wrong") as wrong:
            wrong.ping()


@pytest.mark.parametrize("password", [b"", b"\n"], ids=["empty", "newline"])
def test_an_empty_password_is_refused_rather_than_serving_without_one(tmp_path: Path, password: bytes) -> None:
    with manifest_redis(tmp_path, "sh", password) as (proc, _):
        assert proc.wait(timeout=10) == 1
    assert not (tmp_path / "argv").exists()  # redis-server never ran
    assert "redis-password is missing or empty" in (tmp_path / "stderr").read_text(encoding="utf-8")
