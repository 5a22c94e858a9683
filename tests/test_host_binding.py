"""`vmcp serve --host`: the bound address's Host header is accepted, `--allow-host` adds names, anything
else is still refused (DNS-rebinding protection), and a bind beyond loopback warns: no authentication."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx2
import psutil
import pytest

from tests.support import demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow]

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def a_non_loopback_address() -> str:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    pytest.skip("this machine has no non-loopback IPv4 address")


def status_with_host(url: str, host: str) -> int:
    return httpx2.post(url, json=INITIALIZE, headers={**HEADERS, "Host": host}, timeout=10).status_code


def test_a_wildcard_bind_accepts_this_machines_addresses_and_allowed_names_only(tmp_path: Path) -> None:
    address = a_non_loopback_address()
    # Anonymous on every address is refused unless explicitly allowed (issue 14); this test is about Host checks.
    anonymous_remote = {"incoming": {"allow_anonymous_remote": True}}
    config = write_config(tmp_path, {"backends": [demo_backend("notes")], "auth": anonymous_remote})
    with running_gateway(config, "--host", "0.0.0.0", "--allow-host", "gw.example") as gateway:
        assert status_with_host(gateway.url, f"{address}:{gateway.port}") == 200
        assert status_with_host(gateway.url, f"gw.example:{gateway.port}") == 200
        assert status_with_host(gateway.url, "gw.example") == 200
        assert status_with_host(gateway.url, f"127.0.0.1:{gateway.port}") == 200
        assert status_with_host(gateway.url, f"evil.example:{gateway.port}") == 421
    assert "serving WITHOUT authentication on 0.0.0.0" in gateway.output()


def test_a_loopback_bind_does_not_warn(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")]})
    with running_gateway(config) as gateway:
        assert status_with_host(gateway.url, f"localhost:{gateway.port}") == 200
    assert "without authentication" not in gateway.output()
