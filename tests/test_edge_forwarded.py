"""X-Forwarded-For is believed from `server.trusted_proxies`; it must not make a caller loopback.

`/metrics` and `/readyz`'s detail are loopback's (or a verified credential's). A client inside a trusted range
(README's example, `10.0.0.0/8`, is every pod of a cluster) that connects straight to the gateway and names
itself `X-Forwarded-For: 127.0.0.1` is a forwarded request, not a local one.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from tests.support import api_keys_file, demo_backend, running_gateway, write_config
from tests.test_host_binding import a_non_loopback_address

pytestmark = [pytest.mark.slow]


def test_a_forwarded_for_naming_loopback_does_not_open_metrics_or_readiness_detail(tmp_path: Path) -> None:
    address = a_non_loopback_address()
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["dev"]})
    config = {
        "backends": [demo_backend("notes")],
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        "server": {"trusted_proxies": [f"{address}/32"]},
        "telemetry": {"metrics": {"enabled": True}},
    }
    with running_gateway(write_config(tmp_path, config), "--host", "0.0.0.0") as gateway:
        local = httpx2.get(f"{gateway.base}/readyz", timeout=20).json()
        assert local["backends"][0]["name"] == "notes"  # loopback itself sees the detail
        remote = f"http://{address}:{gateway.port}"
        credential = {"Authorization": f"Bearer {keys['alice']}"}
        assert httpx2.get(f"{remote}/metrics", headers=credential, timeout=20).status_code == 200
        spoofed = {"X-Forwarded-For": "127.0.0.1"}
        assert httpx2.get(f"{remote}/metrics", headers=spoofed, timeout=20).status_code == 401
        readyz = httpx2.get(f"{remote}/readyz", headers=spoofed, timeout=20)
        assert "backends" not in json.loads(readyz.text), readyz.text[:200]
