"""Requests refused before a session serves them are audited and counted, with who asked and from where: a
credential naming a session another principal opened (404, as a missing session; memory store and Redis store,
the session opened on one replica and named on another), and a session opening past
`limits.max_sessions_per_address` (429). The session id, its owner's bearer secret, is written neither to the
audit log nor to the gateway's log. Over real processes: `vmcp serve` behind API keys with the demo backend,
`redis-server`, plain HTTP requests."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.redis_server import running_redis
from tests.support import (
    RAW_HEADERS,
    RAW_INITIALIZE,
    Gateway,
    api_keys_file,
    demo_backend,
    free_port,
    running_gateway,
    write_config,
)
from tests.support import (
    metric_sample as sample,
)

pytestmark = pytest.mark.slow

WAIT = 30.0  # seconds a gateway may take to write what it recorded (the audit writer flushes every 0.1 s)
SUBJECTS = {"alice": ["dev"], "bob": ["dev"]}
HIJACK = {"jsonrpc": "2.0", "id": "hijack", "method": "tools/call", "params": {"name": "demo_whoami", "arguments": {}}}


def setup(directory: Path, keys: Path, extra: dict[str, Any]) -> tuple[Path, Path, str]:
    """A config in `directory` behind the API keys in `keys`, its audit log and metrics on: the config's path,
    the audit file, the metrics' base URL."""
    directory.mkdir(exist_ok=True)
    audit, metrics = directory / "audit.log", free_port()
    config = {
        "backends": [demo_backend("demo")],
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": str(keys)}}},
        "telemetry": {
            "audit": {"enabled": True, "output": str(audit)},
            "metrics": {"enabled": True, "listen": f"127.0.0.1:{metrics}"},
        },
        **extra,
    }
    return write_config(directory, config), audit, f"http://127.0.0.1:{metrics}"


def bearer(key: str) -> dict[str, str]:
    return {**RAW_HEADERS, "Authorization": f"Bearer {key}"}


def open_session(url: str, key: str) -> dict[str, str]:
    """A 2025-11-25 session opened with `key`: the headers its later requests carry."""
    opened = httpx2.post(url, json=RAW_INITIALIZE, headers=bearer(key), timeout=30)
    assert opened.status_code == 200, opened.text
    headers = {**bearer(key), "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    notified = httpx2.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert notified.status_code == 202, notified.text
    return headers


def until(found: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT
    while not (value := found()):
        assert time.monotonic() < deadline, "not recorded in time"
        time.sleep(0.05)
    return value


def refusals(audit: Path) -> list[dict[str, Any]]:
    lines = audit.read_text().splitlines() if audit.exists() else []
    return [event for event in map(json.loads, lines) if event["type"] == "vmcp_session_refused"]


def hijack_refused(gateway: Gateway, audit: Path, metrics: str, alice: dict[str, str], bob_key: str) -> None:
    """Bob, naming Alice's session on `gateway`, is told it does not exist; the refusal is audited naming Bob,
    his address and Alice's session by its caller id, counted, and logged with Bob and his address; the
    session id is in neither the audit log nor the gateway's log."""
    session_id = alice["mcp-session-id"]
    answer = httpx2.post(gateway.url, json=HIJACK, headers={**alice, "Authorization": f"Bearer {bob_key}"}, timeout=30)
    assert answer.status_code == 404, answer.text
    [event] = until(lambda: refusals(audit))
    assert event["outcome"] == "denied" and event["metadata"]["extra"]["error_type"] == "session_owner"
    assert event["subjects"]["user_id"] == "bob" and event["subjects"]["identified_by"] == "api_key"
    assert event["source"] == {"type": "network", "value": "127.0.0.1"}
    assert event["target"]["name"] == f"session:{hashlib.sha256(session_id.encode()).hexdigest()[:16]}"
    assert until(lambda: sample(metrics, "vmcp_sessions_refused_total", reason="session_owner")) == 1
    logged = until(lambda: [line for line in gateway.output().splitlines() if "another principal" in line])
    assert "bob" in logged[0] and "127.0.0.1" in logged[0]
    assert session_id not in audit.read_text() and session_id not in gateway.output()


def test_another_principals_session_named_is_refused_and_audited_with_who_asked_memory_store(tmp_path: Path) -> None:
    keys = api_keys_file(tmp_path / "keys.json", SUBJECTS)
    config, audit, metrics = setup(tmp_path / "gateway", tmp_path / "keys.json", {})
    with running_gateway(config) as gateway:
        alice = open_session(gateway.url, keys["alice"])
        hijack_refused(gateway, audit, metrics, alice, keys["bob"])
        mine = httpx2.post(gateway.url, json=HIJACK, headers=alice, timeout=30)
        assert mine.status_code == 200, mine.text  # the owner's session is untouched


def test_another_principals_session_named_on_another_replica_is_refused_and_audited_redis_store(
    tmp_path: Path,
) -> None:
    keys = api_keys_file(tmp_path / "keys.json", SUBJECTS)
    with running_redis() as redis:
        shared = {"redis": {"url": redis.url}, "sessions": {"store": "redis"}}
        config_a, _, _ = setup(tmp_path / "a", tmp_path / "keys.json", shared)
        config_b, audit_b, metrics_b = setup(tmp_path / "b", tmp_path / "keys.json", shared)
        with running_gateway(config_a) as first, running_gateway(config_b) as second:
            alice = open_session(first.url, keys["alice"])
            hijack_refused(second, audit_b, metrics_b, alice, keys["bob"])
            mine = httpx2.post(second.url, json=HIJACK, headers=alice, timeout=30)
            assert mine.status_code == 200, mine.text  # restored on B for its owner


def test_a_session_refused_by_the_per_caller_limit_is_audited_with_who_asked(tmp_path: Path) -> None:
    """A verified caller's sessions count by its subject (an anonymous one's by its address)."""
    keys = api_keys_file(tmp_path / "keys.json", SUBJECTS)
    limits = {"limits": {"max_sessions_per_caller": 1}}
    config, audit, metrics = setup(tmp_path / "gateway", tmp_path / "keys.json", limits)
    with running_gateway(config) as gateway:
        alice = open_session(gateway.url, keys["alice"])
        refused = httpx2.post(gateway.url, json=RAW_INITIALIZE, headers=bearer(keys["alice"]), timeout=30)
        assert refused.status_code == 429, refused.text
        [event] = until(lambda: refusals(audit))
        assert event["outcome"] == "denied"
        assert event["metadata"]["extra"]["error_type"] == "limits.max_sessions_per_caller"
        assert event["subjects"]["user_id"] == "alice" and event["source"]["value"] == "127.0.0.1"
        reason = "limits.max_sessions_per_caller"
        assert until(lambda: sample(metrics, "vmcp_sessions_refused_total", reason=reason)) == 1
        # Another caller on the same address is served.
        assert open_session(gateway.url, keys["bob"])["mcp-session-id"]
        assert alice["mcp-session-id"] not in audit.read_text() + gateway.output()


def test_a_session_restored_on_another_replica_counts_for_its_caller_not_its_address(tmp_path: Path) -> None:
    """Restored on B, alice's session takes her slot there, not her address's: bob, on the same address, still
    opens one on B under `max_sessions_per_address: 1`, and alice's own cap of 1 holds on B too."""
    keys = api_keys_file(tmp_path / "keys.json", SUBJECTS)
    with running_redis() as redis:
        shared = {
            "redis": {"url": redis.url},
            "sessions": {"store": "redis"},
            "limits": {"max_sessions_per_address": 1, "max_sessions_per_caller": 1},
        }
        config_a, _, _ = setup(tmp_path / "a", tmp_path / "keys.json", shared)
        config_b, _, _ = setup(tmp_path / "b", tmp_path / "keys.json", shared)
        with running_gateway(config_a) as first, running_gateway(config_b) as second:
            alice = open_session(first.url, keys["alice"])
            mine = httpx2.post(second.url, json=HIJACK, headers=alice, timeout=30)
            assert mine.status_code == 200, mine.text  # restored on B
            assert open_session(second.url, keys["bob"])["mcp-session-id"]
            again = httpx2.post(second.url, json=RAW_INITIALIZE, headers=bearer(keys["alice"]), timeout=30)
            assert again.status_code == 429 and "max_sessions_per_caller" in again.text, again.text
