"""A Redis blip must not cost a client its session (`sessions.store: redis`, `sessions.outage_grace_seconds`).

While Redis is failing, a replica cannot look up a session it does not hold: within the grace it answers 503
with Retry-After (the client keeps its session and retries), past it 404 (the client opens a new one); a
session it holds is served all along, and another principal naming one is told what it is told of an id
that does not exist. Real `vmcp serve` replicas, a real `redis-server` killed and started again (or refusing
the gateway's password), plain HTTP clients; every wait polls with a deadline.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
import redis

from tests.redis_server import RedisServer, running_redis
from tests.support import (
    EXAMPLES,
    RAW_HEADERS,
    RAW_INITIALIZE,
    api_keys_file,
    demo_backend,
    raw_session,
    running_gateway,
    running_gateways,
    sse_messages,
    write_config,
)
from vmcp_opt.shared.session_store import session_key_digest

pytestmark = [pytest.mark.slow]

T = TypeVar("T")
LISTING = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
PREFIX = "blip:"
CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"


def eventually(check: Callable[[], T | None], what: str, within: float = 30.0) -> T:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {within}s")
        time.sleep(0.1)


def config(directory: Path, server: RedisServer, grace: float, redis_extra: Any = None, **extra: Any) -> Path:
    settings = {
        "backends": [demo_backend("notes")],
        "redis": {"url": server.url, "timeout": 1.0, "key_prefix": PREFIX, **(redis_extra or {})},
        "sessions": {"store": "redis", "outage_grace_seconds": grace},
    }
    return write_config(directory, settings | extra)


def listed(url: str, headers: dict[str, str]) -> httpx2.Response:
    return httpx2.post(url, json=LISTING, headers=headers, timeout=30)


def assert_retry_later(answer: httpx2.Response, *secrets: str) -> None:
    """503, Retry-After, a JSON-RPC error saying the session store is briefly unavailable, and nothing of
    Redis itself (its address, its password)."""
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    error = answer.json()["error"]
    assert error["code"] == -32000 and "session store is briefly unavailable" in error["message"], error
    assert error["data"] == {"retry_after": 1}
    for secret in secrets:
        assert secret not in answer.text


def test_a_session_held_by_another_replica_is_retried_through_a_redis_restart_and_served_after(
    tmp_path: Path,
) -> None:
    with running_redis() as server:
        conformance = {"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}
        path = config(
            tmp_path, server, grace=600, backends=[conformance], aggregation={"conflict_resolution": "priority"}
        )
        with running_gateways(path, 2) as (first, second):
            session = raw_session(first.url)  # held by the first replica only
            level = {"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "info"}}
            assert httpx2.post(first.url, json=level, headers=session, timeout=30).status_code == 200
            server.stop()
            try:
                assert_retry_later(listed(second.url, session), str(server.port), "redis://")
                # A DELETE too: the client may retry it, and then it reaches every replica.
                assert_retry_later(httpx2.delete(second.url, headers=session, timeout=30))
                assert listed(first.url, session).status_code == 200  # its own replica serves it all along
            finally:
                server.start()
            # Redis is back, empty (no persistence): the first replica writes the record of the session it
            # holds again by itself, without waiting for the client to use it there.
            admin = redis.Redis(port=server.port)
            key = f"{PREFIX}session:{session_key_digest(session['mcp-session-id'])}"
            eventually(lambda: admin.exists(key), "the held session's record written again")
            admin.close()
            # The same session, its log level included, is restored on the second replica.
            params = {"name": "test_tool_with_logging", "arguments": {}}
            call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}
            answer = httpx2.post(second.url, json=call, headers=session, timeout=30)
            assert answer.status_code == 200, answer.text
            messages = [m for _, m in sse_messages(iter([*answer.text.splitlines(), ""])) if m is not None]
            assert len([m for m in messages if m.get("method") == "notifications/message"]) == 3
            # And ended everywhere by a DELETE now.
            assert httpx2.delete(second.url, headers=session, timeout=30).status_code == 200
            assert listed(first.url, session).status_code == 404


def test_past_the_grace_a_session_not_held_here_is_not_found_and_found_again_once_redis_takes_the_password(
    tmp_path: Path,
) -> None:
    password, wrong = os.urandom(12).hex(), os.urandom(12).hex()
    with running_redis() as server:
        redis.Redis(port=server.port).config_set("requirepass", password)
        path = config(tmp_path, server, grace=2, redis_extra={"password_env": "VMCP_TEST_REDIS_PASSWORD"})
        with running_gateways(path, 2, env={"VMCP_TEST_REDIS_PASSWORD": password}) as (first, second):
            session = raw_session(first.url)  # held by the first replica only
            admin = redis.Redis(port=server.port, password=password)
            admin.config_set("requirepass", wrong)  # the gateway's password is refused from now on
            admin.client_kill_filter(_type="normal", skipme=True)  # its open connections too
            admin.close()
            try:
                # The first failed lookup starts the outage: inside the grace, "retry".
                assert_retry_later(listed(second.url, session), password, str(server.port))
                answers: list[int] = []

                def not_found() -> bool:
                    answers.append(listed(second.url, session).status_code)
                    return answers[-1] == 404

                eventually(not_found, "404 once the grace is over")
                assert set(answers) <= {503, 404}, answers
                assert listed(first.url, session).status_code == 200  # held there: served all along
            finally:
                admin = redis.Redis(port=server.port, password=wrong)
                admin.config_set("requirepass", password)
                admin.close()
            # The session was alive all along: once Redis takes the password, the other replica serves it.
            eventually(lambda: listed(second.url, session).status_code == 200, "the session served after")
            log = second.output()
    assert "sessions: Redis refused authentication" in log, log
    assert "sessions.outage_grace_seconds" in log, log
    assert password not in log and wrong not in log


def test_a_grace_of_zero_answers_404_at_once(tmp_path: Path) -> None:
    with running_redis() as server, running_gateways(config(tmp_path, server, grace=0), 2) as (first, second):
        session = raw_session(first.url)
        server.stop()
        answer = listed(second.url, session)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["message"] == "Session not found"
        assert "retry-after" not in answer.headers
        assert listed(first.url, session).status_code == 200


def test_in_an_outage_another_principal_naming_a_held_session_is_told_what_any_unknown_id_is_told(
    tmp_path: Path,
) -> None:
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["dev"], "bob": ["dev"]})
    auth = {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}}
    with running_redis() as server, running_gateway(config(tmp_path, server, grace=600, auth=auth)) as gateway:
        headers = {**RAW_HEADERS, "Authorization": f"Bearer {keys['alice']}"}
        opened = httpx2.post(gateway.url, json=RAW_INITIALIZE, headers=headers, timeout=30)
        assert opened.status_code == 200, opened.text
        alice = {**headers, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        as_bob = {**alice, "Authorization": f"Bearer {keys['bob']}"}
        unknown = {**as_bob, "mcp-session-id": os.urandom(16).hex()}
        server.stop()
        held, nowhere = listed(gateway.url, as_bob), listed(gateway.url, unknown)
        assert_retry_later(held)
        assert (held.status_code, held.headers["retry-after"], held.json()) == (
            nowhere.status_code,
            nowhere.headers["retry-after"],
            nowhere.json(),
        )
        assert listed(gateway.url, alice).status_code == 200  # its owner is served
