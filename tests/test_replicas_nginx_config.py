"""deploy/nginx/vmcp.conf, run by a real nginx in front of two real replicas on a real Redis, with the SDK client.

The shipped config is used as it is, but for its listen port and its upstream servers (rewritten to this
test's): a session moves between the replicas through it, and a replica SIGKILLed while it runs a call costs
that call alone. nginx must not send the call again to the other replica (it would run twice: once where it
was cut, once again), so each call start is written down by the backend, with the replica that asked for it.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.nginx_server import nginx_binary
from tests.redis_server import running_redis
from tests.support import ROOT, Gateway, free_port, running_gateway, stop_process, write_config

pytestmark = [pytest.mark.slow]

SHIPPED = ROOT / "deploy" / "nginx" / "vmcp.conf"
HOLD_SECONDS = 20.0
BACKEND = """\
import os, sys, anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("hold")

@server.tool()
async def hold(seconds: float) -> str:
    \"\"\"Writes down that it started (with its gateway's pid), then waits `seconds`.\"\"\"
    with open(sys.argv[1], "a") as log:
        log.write(f"{os.getppid()}\\n")
    await anyio.sleep(seconds)
    return "held"

server.run()
"""
MAIN = """\
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/vmcp.conf;
}}
"""


def shipped_for(ports: list[int], listen: int) -> str:
    """The shipped config, its upstream servers this test's, its TLS server plain HTTP on `listen`, its port-80
    redirect left out (TLS itself: tests/test_deploy31.py)."""
    text = SHIPPED.read_text(encoding="utf-8")
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n" for p in ports)
    text, replaced = re.subn(r"(    server 127\.0\.0\.1:\d+ [^\n]*\n)+", servers, text, count=1)
    assert replaced == 1
    text, replaced = re.subn(r"server \{\n    listen 80;.*?\n\}\n", "", text, flags=re.S)
    assert replaced == 1
    text, replaced = re.subn(r"listen 443 ssl;", f"listen 127.0.0.1:{listen};", text)
    assert replaced == 1
    return re.sub(r"\n\s*(listen \[::\]|ssl_)[^\n]*;", "", text)


@contextlib.contextmanager
def shipped_nginx(directory: Path, ports: list[int]) -> Iterator[str]:
    directory.mkdir(parents=True, exist_ok=True)
    listen = free_port()
    (directory / "vmcp.conf").write_text(shipped_for(ports, listen), encoding="utf-8")
    (directory / "nginx.conf").write_text(MAIN.format(d=directory), encoding="utf-8")
    binary = nginx_binary()
    proc = subprocess.Popen(
        [binary, "-c", str(directory / "nginx.conf"), "-p", str(directory), "-e", str(directory / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", listen), timeout=0.2):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{listen}/mcp"
    finally:
        stop_process(proc)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[str, list[Gateway], Path]]:
    """nginx's URL, the two replicas, the backends' file of call starts."""
    (tmp_path / "hold.py").write_text(BACKEND, encoding="utf-8")
    starts = tmp_path / "starts.log"
    starts.touch()
    with running_redis() as redis:
        config = {
            "backends": [{"name": "hold", "command": sys.executable, "args": [str(tmp_path / "hold.py"), str(starts)]}],
            "redis": {"url": redis.url, "timeout": 1.0},
            "sessions": {"store": "redis"},
            "aggregation": {"conflict_resolution": "priority"},  # tools keep their own names
        }
        path = write_config(tmp_path, config)
        with (
            running_gateway(path) as first,
            running_gateway(path) as second,
            shipped_nginx(tmp_path / "nginx", [first.port, second.port]) as url,
        ):
            yield url, [first, second], starts


def callers(starts: Path) -> list[int]:
    return [int(line) for line in starts.read_text().split()]


def test_a_call_cut_by_a_killed_replica_is_not_run_again_on_another(
    pool: tuple[str, list[Gateway], Path],
) -> None:
    url, replicas, starts = pool
    outcome: list[str] = []

    async def main() -> str:
        http = httpx2.AsyncClient(timeout=60)
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            for _ in range(2):
                await client.list_tools()  # through both replicas: the session is held by both

            async def call() -> None:
                try:
                    result = await client.call_tool("hold", {"seconds": HOLD_SECONDS})
                    outcome.append("error" if result.is_error else "ok")
                except Exception as exc:
                    outcome.append(f"failed: {type(exc).__name__}: {exc}")

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call)
                with anyio.fail_after(30):  # a guard against hanging, not a measure
                    while not callers(starts) and not outcome:  # noqa: ASYNC110 - the backend writes the call's start
                        await anyio.sleep(0.05)
                assert not outcome, outcome
                [running] = [g for g in replicas if g.proc.pid == callers(starts)[0]]
                running.proc.send_signal(signal.SIGKILL)
                running.proc.wait()
            # The session carries on through the replica left.
            tools = await client.list_tools()
            return ",".join(t.name for t in tools.tools)

    assert anyio.run(main) == "hold"
    # The cut call failed; it was not sent again to the other replica (which would have run it to "ok").
    assert outcome and outcome[0] != "ok", outcome
    assert len(callers(starts)) == 1
