"""A session belongs to the principal that opened it: another credential naming its id is told it does not
exist, on the replica that opened it and on any other (`sessions.store: redis`). Real replicas on a real Redis,
API keys, plain HTTP clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.redis_server import RedisServer, running_redis
from tests.support import RAW_HEADERS, RAW_INITIALIZE, api_keys_file, demo_backend, running_gateways, write_config

pytestmark = pytest.mark.slow

LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def opened(url: str, key: str) -> dict[str, str]:
    """A 2025-11-25 session opened with `key`: the headers its requests carry (the key's own included)."""
    headers = {**RAW_HEADERS, "Authorization": f"Bearer {key}"}
    answer = httpx2.post(url, json=RAW_INITIALIZE, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    headers |= {"mcp-session-id": answer.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert httpx2.post(url, json=initialized, headers=headers, timeout=30).status_code == 202
    return headers


def listed(url: str, headers: dict[str, str]) -> httpx2.Response:
    return httpx2.post(url, json=LIST, headers=headers, timeout=30)


def test_another_credential_cannot_use_a_session_on_any_replica(tmp_path: Path, redis: RedisServer) -> None:
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["dev"], "bob": ["dev"]})
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes")],
            "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
            "redis": {"url": redis.url, "timeout": 1.0, "key_prefix": "owner-test:"},
            "sessions": {"store": "redis"},
        },
    )
    with running_gateways(config, 2) as (first, second):
        alice = opened(first.url, keys["alice"])
        as_bob = {**alice, "Authorization": f"Bearer {keys['bob']}"}
        for gateway in (first, second):  # where it was opened, and a replica that would restore it
            refused = listed(gateway.url, as_bob)
            assert refused.status_code == 404, refused.text
            assert "Session not found" in refused.text
        for gateway in (second, first):  # its owner still uses it everywhere
            served = listed(gateway.url, alice)
            assert served.status_code == 200, served.text
            assert "notes_" in served.text
        refused = listed(second.url, as_bob)  # restored there now: still not bob's
        assert refused.status_code == 404, refused.text
