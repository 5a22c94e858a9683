"""Strict Host and Origin matching: a port is digits, a name is a name; patterns `name`, `name:*`, `name:port`."""

from __future__ import annotations

import pytest

from vmcp_opt.server.host_check import host_allowed, origin_allowed

HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*", "gw.example", "gw.example:*", "10.0.0.5:8000"]
ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "https://app.example"]


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8000", "LOCALHOST:1", "[::1]:65535", "gw.example", "gw.example:443", "10.0.0.5:8000"]
)
def test_hosts_naming_this_gateway_are_accepted(host: str) -> None:
    assert host_allowed(host, HOSTS)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:evil.example.com",
        "127.0.0.1:80@evil.example",
        "127.0.0.1",
        "127.0.0.1:",
        "10.0.0.5:8001",
        "evil.example:8000",
        "gw.example.evil:80",
        "gw.example\x1b[31m",
        "",
        "[::1]:x",
    ],
)
def test_hosts_that_only_look_like_it_are_refused(host: str) -> None:
    assert not host_allowed(host, HOSTS)


def test_origins_are_parsed_as_strictly() -> None:
    assert origin_allowed("http://127.0.0.1:5173", ORIGINS)
    assert origin_allowed("https://app.example", ORIGINS)
    assert not origin_allowed("http://127.0.0.1:5173.evil.example", ORIGINS)
    assert not origin_allowed("http://127.0.0.1:x", ORIGINS)
    assert not origin_allowed("https://127.0.0.1:5173", ORIGINS)
    assert not origin_allowed("null", ORIGINS)
