"""Two review findings at authentication's edges, over real `vmcp` processes.

- An `oauth.resource` the gateway cannot publish as its protected-resource metadata (`api://vmcp`, a port past
  65535) passed `vmcp validate`, then `vmcp serve` died on a traceback: both now refuse it as a config error.
- `/readyz` answers a verified caller with more than the status word, so it checks credentials: its refusals
  are now counted, logged and audited as `/mcp`'s are (a key guessed against it was invisible).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import (
    RAW_HEADERS,
    RAW_INITIALIZE,
    api_keys_file,
    demo_backend,
    free_port,
    running_gateway,
    write_config,
)

pytestmark = [pytest.mark.slow]

# Not a proxy the gateway trusts: the header only keeps the request from being taken for loopback's.
FORWARDED = {"X-Forwarded-For": "203.0.113.9"}


@pytest.mark.parametrize(
    "resource",
    [
        "api://vmcp",  # an audience, not a URL a client can reach
        "urn:example:vmcp",
        "https://vmcp.example.com:99999/mcp",  # no such port
        "https://vm cp.example.com/mcp",
        "https:///mcp",  # no host (it would have been read as the host `mcp`)
        "https://operator:s3cret@vmcp.example.com/mcp",  # credentials in the public metadata
    ],
)
def test_a_resource_serve_cannot_publish_is_refused_by_validate_and_serve_alike(tmp_path: Path, resource: str) -> None:
    config = {
        "backends": [demo_backend("notes")],
        # The issuer is never asked: the config is refused before anything starts.
        "auth": {"incoming": {"mode": "oauth", "oauth": {"issuer": "http://127.0.0.1:9", "resource": resource}}},
    }
    path = write_config(tmp_path, config)
    commands = {
        "validate": ["validate", "-c", str(path)],
        "serve": ["serve", "-c", str(path), "--port", str(free_port())],
    }
    for name, args in commands.items():
        done = subprocess.run(
            [sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        output = done.stdout + done.stderr
        assert done.returncode == 2, (name, done.returncode, output)  # the CLI's exit status for a bad config
        assert "Traceback" not in output, (name, output)
        assert "auth.incoming.oauth.resource:" in output and "https://" in output, (name, output)
        assert "s3cret" not in output, (name, output)


def _audit_events(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def _denials_once(path: Path, error: str) -> list[str]:
    """The error types of the audit's `vmcp_auth_denied` events, once one of `error` is written (one writer
    thread writes events in the order they came: those before it are written by then)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        denied = [e["metadata"]["extra"]["error_type"] for e in _audit_events(path) if e["type"] == "vmcp_auth_denied"]
        if error in denied:
            return denied
        time.sleep(0.05)
    raise AssertionError(f"no vmcp_auth_denied {error} in {path}")


def _auth_counts(metrics: str) -> dict[str, float]:
    counts = {}
    for line in metrics.splitlines():
        if line.startswith('vmcp_auth_total{method="api_keys",outcome="'):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = float(line.rsplit(" ", 1)[1])
    return counts


def test_a_credential_refused_on_readyz_is_counted_logged_and_audited_as_on_mcp(tmp_path: Path) -> None:
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["users"]})
    config = {
        "backends": [demo_backend("notes")],
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        "telemetry": {"audit": {"enabled": True, "output": "audit.log"}, "metrics": {"enabled": True}},
    }
    audit = tmp_path / "audit.log"
    with running_gateway(write_config(tmp_path, config)) as gateway:
        readyz = f"{gateway.base}/readyz"
        probe = httpx2.get(readyz, headers=FORWARDED, timeout=30)  # a load balancer's: no credential to refuse
        bad = {**FORWARDED, "Authorization": "Bearer vmcp_not-a-known-key-1234"}
        refused = httpx2.get(readyz, headers=bad, timeout=30)
        good = httpx2.get(readyz, headers={**FORWARDED, "Authorization": f"Bearer {keys['alice']}"}, timeout=30)
        # Then one refused on /mcp, of another kind: once its event is written, /readyz's is too.
        in_query = httpx2.post(f"{gateway.url}?access_token=x", json=RAW_INITIALIZE, headers=RAW_HEADERS, timeout=30)
        denied = _denials_once(audit, "invalid_request")
        metrics = httpx2.get(f"{gateway.base}/metrics", timeout=30).text  # loopback: no credential needed
        output = gateway.output()

    assert probe.json() == {"status": "ready"} and refused.json() == {"status": "ready"}
    assert "backends" in good.json()  # a verified caller still sees the detail
    assert in_query.status_code == 400
    assert sorted(denied) == ["invalid_request", "invalid_token"], denied
    assert "not-a-known-key" not in audit.read_text()
    counts = _auth_counts(metrics)
    assert counts.get("invalid_token") == 1 and counts.get("invalid_request") == 1, metrics
    assert counts.get("accepted") == 1, metrics  # the good key on /readyz
    assert "missing" not in counts, metrics  # probes without a credential are not refusals
    assert "auth: refused /readyz from" in output, output
    assert "not-a-known-key" not in output
