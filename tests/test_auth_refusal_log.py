"""Refused logins cost the log one line a minute per kind of refusal, however many arrive: anyone who can
reach the port can send them at request rate. Every one is still counted (metrics)."""

from __future__ import annotations

from pathlib import Path

import httpx2

from tests.support import api_keys_file, demo_backend, running_gateway, write_config

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def test_a_flood_of_bad_keys_is_one_log_line_and_every_one_counted(tmp_path: Path) -> None:
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["users"]})
    config = {
        "backends": [demo_backend("notes")],
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        "telemetry": {"metrics": {"enabled": True}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        for n in range(60):
            bad = {**HEADERS, "authorization": f"Bearer vmcp_not-a-key-{n}"}
            assert httpx2.post(gateway.url, json=INITIALIZE, headers=bad, timeout=30).status_code == 401
        good = {**HEADERS, "authorization": f"Bearer {keys['alice']}"}
        metrics = httpx2.get(f"{gateway.base}/metrics", headers=good, timeout=30).text
        output = gateway.output()
    assert output.count("auth: refused") == 1, output
    refused = [line for line in metrics.splitlines() if line.startswith("vmcp_auth_total{") and "accepted" not in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in refused) == 60, refused
