"""Operating a gateway on Redis: a refused password is named, Redis going and coming back is logged once each,
and the optimizer's usage history outlives a Redis that restarts empty.

A real `redis-server` (tests/redis_server.py: no persistence, so a restart empties it; `requirepass` set on it
with CONFIG SET) and real `vmcp serve` processes; `/readyz` asked over HTTP, the log read from the process.
Every wait polls with a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx2
import pytest
import redis
from mcp import Client

from tests.redis_server import RedisServer, running_redis
from tests.support import Gateway, demo_backend, raw_session, running_gateway, write_config

pytestmark = [pytest.mark.slow]

RIGHT = "right-redis-password-5b1e"
WRONG = "wrong-redis-password-c93d"
PASSWORD_ENV = "VMCP_TEST_REDIS_PASSWORD"
PREFIX = "vmcp-test:"
T = TypeVar("T")


def eventually(check: Callable[[], T | None], what: str, within: float = 30.0) -> T:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {within}s")
        time.sleep(0.1)


def readyz(gateway: Gateway) -> tuple[int, dict[str, Any], str]:
    answer = httpx2.get(f"{gateway.base}/readyz", timeout=10)
    return answer.status_code, answer.json(), answer.text


def redis_state(gateway: Gateway, state: str) -> Callable[[], tuple[int, dict[str, Any], str] | None]:
    """A check for `eventually`: the `/readyz` answer once it shows Redis in `state`."""

    def check() -> tuple[int, dict[str, Any], str] | None:
        answer = readyz(gateway)
        return answer if answer[1].get("redis", {}).get("state") == state else None

    return check


def sessions_config(directory: Path, server: RedisServer, **redis_settings: Any) -> Path:
    return write_config(
        directory,
        {
            "backends": [demo_backend("notes")],
            "redis": {"url": server.url, "timeout": 1.0, **redis_settings},
            "sessions": {"store": "redis"},
        },
    )


@pytest.mark.parametrize(
    ("configured", "reason"),
    [(WRONG, "refused the password"), (None, "requires a password (authentication required)")],
    ids=["wrong-password", "no-password"],
)
def test_a_refused_password_is_named_in_readyz_and_logged_once_never_the_password(
    tmp_path: Path, configured: str | None, reason: str
) -> None:
    with running_redis() as server:
        admin = redis.Redis(port=server.port, single_connection_client=True)  # stays authenticated
        admin.config_set("requirepass", RIGHT)
        settings = {"password_env": PASSWORD_ENV} if configured else {}
        env = {PASSWORD_ENV: configured} if configured else {}
        with running_gateway(sessions_config(tmp_path, server, **settings), env=env) as gateway:
            code, body, text = eventually(redis_state(gateway, "unauthenticated"), "Redis unauthenticated in /readyz")
            assert code == 200 and body["status"] == "degraded", body  # as with Redis unreachable: it serves
            assert reason in body["redis"]["error"] and body["redis"]["used_by"] == ["sessions.store"]
            raw_session(gateway.url)  # a session opens all the same, held by this replica alone
            answers = [text] + [readyz(gateway)[2] for _ in range(3)]  # each checks Redis again
            where = f"Redis at 127.0.0.1:{server.port}"
            assert gateway.output().count(f"{where} {reason}") == 1, gateway.output()

            # The operator sets the password the gateway has (or none): it says so once, and is ready.
            admin.config_set("requirepass", configured or "")
            code, body, text = eventually(redis_state(gateway, "reachable"), "Redis reachable in /readyz")
            assert code == 200 and body["status"] == "ready" and body["redis"]["error"] is None
            eventually(lambda: f"{where} is reachable again" in gateway.output(), "the line saying Redis is back")
            log = gateway.output()
        answers.append(text)
    assert log.count("is reachable again") == 1
    for secret in (RIGHT, WRONG):
        assert secret not in log and not any(secret in answer for answer in answers)


def test_redis_gone_then_back_is_one_warning_and_one_line_saying_it_is_back(tmp_path: Path) -> None:
    with running_redis() as server, running_gateway(sessions_config(tmp_path, server)) as gateway:
        eventually(redis_state(gateway, "reachable"), "Redis reachable in /readyz")
        server.stop()
        code, body, _ = eventually(redis_state(gateway, "unreachable"), "Redis unreachable in /readyz")
        assert code == 200 and body["status"] == "degraded" and "unreachable" in body["redis"]["error"]
        for _ in range(3):
            readyz(gateway)  # each tries Redis again, as the replica's heartbeat does every second meanwhile
        server.start()
        code, body, _ = eventually(redis_state(gateway, "reachable"), "Redis reachable again in /readyz")
        assert code == 200 and body["status"] == "ready"
        where = f"Redis at 127.0.0.1:{server.port}"
        eventually(lambda: f"{where} is reachable again" in gateway.output(), "the line saying Redis is back")
        for _ in range(3):
            readyz(gateway)
        log = gateway.output()
    assert log.count(f"{where} unreachable") == 1, log
    assert log.count(f"{where} is reachable again") == 1, log


def usage_config(directory: Path, server: RedisServer) -> Path:
    return write_config(
        directory,
        {
            "backends": [demo_backend("notes")],
            "optimizer": {
                "enabled": True,
                "index_dir": str(directory / "index"),
                "usage_store": "redis",
                "usage_sync_interval": 0.2,
            },
            "redis": {"url": server.url, "key_prefix": PREFIX},
        },
    )


def merges(gateway: Gateway) -> int:
    """The replica's merges with Redis so far (its debug log says each)."""
    return gateway.output().count("usage history merged with Redis")


def after_two_more_merges(gateway: Gateway) -> None:
    seen = merges(gateway)
    eventually(lambda: merges(gateway) >= seen + 2, "two more merges of the usage history")


def test_the_usage_history_is_written_back_by_a_replica_after_redis_restarts_empty(tmp_path: Path) -> None:
    with running_redis() as server:
        path = usage_config(tmp_path, server)
        store = redis.Redis(port=server.port)
        tasks, pairs = PREFIX + "usage:tasks", PREFIX + "usage:together"
        with running_gateway(path, "--log-level", "debug") as gateway:

            async def one_task() -> None:
                async with Client(gateway.url, mode="legacy") as client:  # hidden behind the optimizer, callable
                    for name, arguments in (("notes_save_note", {"title": "t", "text": "x"}), ("notes_whoami", {})):
                        result = await client.call_tool(name, arguments)
                        assert not result.is_error, result.content

            anyio.run(one_task)
            learned = eventually(lambda: store.hgetall(tasks) if len(store.hgetall(tasks)) == 2 else None, "the task")
            together = store.hgetall(pairs)
            assert learned == {b"notes_save_note": b"1", b"notes_whoami": b"1"} and len(together) == 2

            server.stop()
            server.start()  # no persistence: empty
            eventually(lambda: store.hgetall(tasks) == learned, "the history written back")
            assert store.hgetall(pairs) == together
            after_two_more_merges(gateway)  # written back once, not added again
            assert store.hgetall(tasks) == learned and store.hgetall(pairs) == together
            assert gateway.output().count("was gone (Redis restarted empty?)") == 1

            # A deletion by the operator is not undone.
            subprocess.run(
                [sys.executable, "-m", "vmcp_opt", "index", "usage", "--clear", "-c", str(path)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            after_two_more_merges(gateway)
            assert not store.exists(tasks) and not store.exists(pairs)
            assert "was cleared (vmcp index usage --clear)" in gateway.output()


def test_validate_connect_names_a_refused_or_missing_password_never_the_password(tmp_path: Path) -> None:
    """The real `vmcp validate --connect`: exit 1 naming why Redis does not serve the gateway, 0 once it does."""
    vmcp = str(Path(sys.executable).parent / "vmcp")

    def validate(server: RedisServer, password: str | None, **settings: Any) -> subprocess.CompletedProcess[str]:
        config = sessions_config(tmp_path, server, **settings)
        env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV} | (
            {PASSWORD_ENV: password} if password else {}
        )
        command = [vmcp, "validate", "--connect", "-c", str(config)]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)

    with running_redis() as server:
        redis.Redis(port=server.port).config_set("requirepass", RIGHT)
        wrong = validate(server, WRONG, password_env=PASSWORD_ENV)
        missing = validate(server, None)
        right = validate(server, RIGHT, password_env=PASSWORD_ENV)
    gone = validate(server, RIGHT, password_env=PASSWORD_ENV)  # the server stopped
    where = f"redis.url (127.0.0.1:{server.port})"
    assert wrong.returncode == 1, wrong.stderr
    assert f"{where}: Redis refused the password (redis.password_env: {PASSWORD_ENV})" in wrong.stderr
    assert missing.returncode == 1 and "requires a password (authentication required)" in missing.stderr
    assert right.returncode == 0, right.stderr
    assert gone.returncode == 1 and "unreachable" in gone.stderr
    for done in (wrong, missing, right, gone):
        assert RIGHT not in done.stdout + done.stderr and WRONG not in done.stdout + done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("query", ["password=hunter2secret", "username=ops&Password=hunter2secret"])
def test_credentials_in_the_redis_urls_query_are_refused_and_not_echoed(tmp_path: Path, query: str) -> None:
    """redis-py reads `?password=` as it reads `user:password@`: both are refused, naming the settings to use."""
    config = write_config(
        tmp_path, {"sessions": {"store": "redis"}, "redis": {"url": f"redis://127.0.0.1:6399/0?{query}"}}
    )
    vmcp = str(Path(sys.executable).with_name("vmcp"))
    done = subprocess.run([vmcp, "validate", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "redis.url: no credentials in the URL: use password_env or password_file" in done.stdout + done.stderr
    assert "hunter2secret" not in done.stdout + done.stderr
