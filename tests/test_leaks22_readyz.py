"""`/readyz`'s detail names every backend and its last error (which can carry hostnames, URLs and paths). With an
authorization policy, a caller whose credential verifies may still be one the policy hides a backend from: the
detail is then loopback's alone, and such a caller, like an unauthenticated probe, gets the status word and the
status code. A forwarding header makes a request not loopback's (an ingress in front), as a remote caller is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import demo_backend, policed_config, running_gateway

pytestmark = [pytest.mark.slow]

# Only `notes` is alice's: the policy hides `vault` from her (its tools are never listed for her).
POLICY = 'permit(principal in Group::"dev", action, resource in Backend::"notes");\n'
# A path only the failing backend's error holds.
VAULT_COMMAND = "/srv/vault-internal-7f3a/bin/serve-vault"
FORWARDED = {"X-Forwarded-For": "203.0.113.9"}


def vault_error(base: str) -> str | None:
    """The hidden backend's last error as loopback reads it, once it has one."""
    body: dict[str, Any] = httpx2.get(f"{base}/readyz", timeout=10).json()
    vault = next((b for b in body.get("backends", []) if b["name"] == "vault"), None)
    return str(vault["last_error"]) if vault is not None and vault.get("last_error") else None


def test_a_caller_the_policy_hides_a_failing_backend_from_reads_neither_its_name_nor_its_error(tmp_path: Path) -> None:
    config = {"backends": [demo_backend("notes"), {"name": "vault", "command": VAULT_COMMAND}]}
    path, keys = policed_config(tmp_path, {"alice": ["dev"]}, POLICY, config)
    with running_gateway(path) as gateway:
        deadline = time.monotonic() + 30
        while (error := vault_error(gateway.base)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert error is not None and "serve-vault" in error, error  # loopback, the operator, sees it
        local = httpx2.get(f"{gateway.base}/readyz", timeout=10)

        alice = httpx2.get(
            f"{gateway.base}/readyz", headers=FORWARDED | {"Authorization": f"Bearer {keys['alice']}"}, timeout=10
        )
        assert "vault" not in alice.text and "serve-vault" not in alice.text, alice.text[:300]
        assert alice.json() == {"status": local.json()["status"]}
        assert alice.status_code == local.status_code  # what a load balancer reads is the same

        probe = httpx2.get(f"{gateway.base}/readyz", headers=FORWARDED, timeout=10)
        assert probe.json() == {"status": local.json()["status"]} and probe.status_code == local.status_code


def test_under_a_policy_metrics_on_the_mcp_port_are_loopbacks_alone(tmp_path: Path) -> None:
    """`/metrics` names every backend and its health as `/readyz`'s detail does: a verified caller the policy
    hides `vault` from is refused it, as a probe is; loopback reads it."""
    config = {
        "backends": [demo_backend("notes"), {"name": "vault", "command": VAULT_COMMAND}],
        "telemetry": {"metrics": {"enabled": True}},
    }
    path, keys = policed_config(tmp_path, {"alice": ["dev"]}, POLICY, config)
    with running_gateway(path) as gateway:
        local = httpx2.get(f"{gateway.base}/metrics", timeout=10)
        assert local.status_code == 200 and "vault" in local.text, local.text[:300]
        alice = httpx2.get(
            f"{gateway.base}/metrics", headers=FORWARDED | {"Authorization": f"Bearer {keys['alice']}"}, timeout=10
        )
        assert alice.status_code == 401 and "vault" not in alice.text, alice.text[:300]
        assert "telemetry.metrics.listen" in alice.json()["error"]
