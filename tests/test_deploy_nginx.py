"""deploy/nginx/vmcp.conf passes what the gateway behind it accepts: a tool call with a body of several MB
(server.max_body_bytes allows 4 MiB) and a header line longer than nginx's default 8k (limits.max_header_bytes
allows 64 KiB), through a real nginx running the shipped config, to a real gateway, with the SDK client.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client

from tests.nginx_server import nginx_binary
from tests.support import demo_backend, free_port, running_gateway, stop_process, wait_http, write_config
from tests.test_replicas_nginx_config import MAIN, shipped_for

pytestmark = [pytest.mark.slow]

BIG_TEXT = 3_000_000  # characters: a body of about 3 MB, under the gateway's 4 MiB


@contextlib.contextmanager
def shipped_nginx(directory: Path, port: int) -> Iterator[str]:
    """nginx with the shipped config (its listen port and upstream this test's); its URL for /mcp."""
    directory.mkdir(parents=True)
    listen = free_port()
    (directory / "vmcp.conf").write_text(shipped_for([port], listen), encoding="utf-8")
    main = MAIN.format(d=directory)
    if os.geteuid() == 0:  # workers would run as nobody, who cannot write the large bodies to this test's dirs
        main = "user root;\n" + main
    (directory / "nginx.conf").write_text(main, encoding="utf-8")
    command = [nginx_binary(), "-c", str(directory / "nginx.conf"), "-p", str(directory)]
    proc = subprocess.Popen([*command, "-e", str(directory / "error.log")], stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{listen}/healthz", proc=proc)
        yield f"http://127.0.0.1:{listen}/mcp"
    finally:
        stop_process(proc)


def test_the_shipped_nginx_passes_what_the_gateway_accepts(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")]})

    async def save_big_note(url: str) -> types.CallToolResult:
        async with Client(url) as client:
            return await client.call_tool("notes_save_note", {"title": "big", "text": "x" * BIG_TEXT})

    with running_gateway(config) as gateway, shipped_nginx(tmp_path / "nginx", gateway.port) as url:
        result = anyio.run(save_big_note, url)
        texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
        assert not result.is_error and texts == [f"saved note 'big' ({BIG_TEXT} characters)"], texts
        # A bearer token of 20 KB: through nginx to the gateway, which answers as it does directly.
        long_header = {"X-Long-Credential": "t" * 20_000}
        base = url.removesuffix("/mcp")
        direct = httpx2.get(f"{gateway.base}/healthz", headers=long_header, timeout=10)
        proxied = httpx2.get(f"{base}/healthz", headers=long_header, timeout=10)
        assert direct.status_code == 200
        assert proxied.status_code == 200, proxied.text[:200]
        assert proxied.json() == {"status": "ok"}
