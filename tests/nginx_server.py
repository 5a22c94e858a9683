"""A real nginx on a free loopback port, round-robin without affinity in front of gateway replicas (or one).

Its own config, pid, temp and log paths in a temporary directory; in the foreground (`daemon off;`), so the
test owns the process.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support import free_port, stop_process, unavailable, wait_http

CONFIG = """\
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    # Round-robin, no affinity: consecutive requests of one session go to different replicas.
    upstream replicas {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # Trusted (server.trusted_proxies) or not, a proxy appends the address it saw.
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # SSE: pass each event on as it comes.
            proxy_buffering off;
            proxy_read_timeout 300s;
            # A replica that refuses connections (killed) is skipped, POSTs included: nothing reached it. Never
            # `non_idempotent`: a POST sent to a replica that then died would run again on another (as
            # deploy/nginx/vmcp.conf says).
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/mcp"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        unavailable("nginx is not installed (scripts/setup.sh dev installs it when run as root)")
    return found


@contextlib.contextmanager
def running_nginx(directory: Path, upstream_ports: list[int]) -> Iterator[Nginx]:
    binary = nginx_binary()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=60s;" for p in upstream_ports)
    config = directory / "nginx.conf"
    config.write_text(CONFIG.format(directory=directory, servers=servers, port=port), encoding="utf-8")
    proc = subprocess.Popen(
        [binary, "-c", str(config), "-p", str(directory), "-e", str(directory / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        yield Nginx(port)
    finally:
        stop_process(proc)
