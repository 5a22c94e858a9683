"""Per-backend credentials in process: the token cache's single flight and refresh, secrets from env and files,
and that no repr shows a token."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from vmcp_opt.auth import Caller, Identification
from vmcp_opt.auth.identity import BearerToken, Identity
from vmcp_opt.backends.credentials import BackendCredentials, SubjectToken
from vmcp_opt.backends.errors import CredentialError
from vmcp_opt.backends.token_client import Token, TokenCache
from vmcp_opt.backends.transports import stdio_parameters
from vmcp_opt.config import BackendConfig

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_concurrent_callers_share_one_token_request() -> None:
    cache = TokenCache(refresh_before=30)
    fetched = 0

    async def fetch() -> Token:
        nonlocal fetched
        fetched += 1
        await anyio.sleep(0.05)
        return Token(f"token-{fetched}", time.monotonic() + 600)

    values: list[str] = []

    async def get() -> None:
        values.append(await cache.get("k", fetch))

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(get)
    assert fetched == 1 and set(values) == {"token-1"}


async def test_a_token_is_replaced_before_it_expires_even_when_it_lives_shorter_than_refresh_before() -> None:
    cache = TokenCache(refresh_before=30)
    lifetimes = iter([0.2, 600])

    async def fetch() -> Token:
        return Token(f"t{time.monotonic()}", time.monotonic() + next(lifetimes))

    first = await cache.get("k", fetch)
    assert cache.fresh("k") == first  # kept for half its life, not refetched on every call
    await anyio.sleep(0.15)
    assert cache.fresh("k") is None
    assert await cache.get("k", fetch) != first


async def test_refused_exchanges_leave_nothing_held_per_caller_token() -> None:
    """Each distinct caller token is a key; a provider that refuses them all must not make the cache keep a lock
    per key until 10,000 tokens are cached (never, when every exchange is refused)."""
    cache = TokenCache(refresh_before=30)

    async def refuse() -> Token:
        raise CredentialError("api", "token exchange", "refused")

    for i in range(500):
        with pytest.raises(CredentialError):
            await cache.get(f"caller-token-{i}", refuse)
    assert not cache._flights and not cache._tokens
    assert await cache.get("caller-token-0", _fresh_token) == "ok"


async def _fresh_token() -> Token:
    return Token("ok", time.monotonic() + 600)


def test_invalidate_drops_only_the_token_that_was_refused() -> None:
    cache = TokenCache(refresh_before=0)
    cache._tokens["k"] = Token("new", time.monotonic() + 60, time.monotonic() + 60)
    cache.invalidate("k", "old")
    assert cache.fresh("k") == "new"
    cache.invalidate("k", "new")
    assert cache.fresh("k") is None


def test_header_secrets_come_from_env_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCP_TEST_TOKEN", "env-secret-123456")
    (tmp_path / "key.txt").write_text("file-secret-123456\n")
    stdio = BackendConfig.model_validate(
        {
            "name": "s",
            "command": "python",
            "auth": {"type": "header", "env": {"API_TOKEN": {"file": str(tmp_path / "key.txt")}}},
        }
    )
    env = BackendCredentials(stdio, tmp_path).child_env()
    assert env == {"API_TOKEN": "file-secret-123456"}
    assert stdio_parameters(stdio, tmp_path, env).env["API_TOKEN"] == "file-secret-123456"
    http = BackendConfig.model_validate(
        {
            "name": "h",
            "transport": "streamable-http",
            "url": "http://127.0.0.1:1/mcp",
            "auth": {"type": "header", "headers": {"Authorization": {"env": "VMCP_TEST_TOKEN", "prefix": "Bearer "}}},
        }
    )
    assert BackendCredentials(http, tmp_path).headers() == {"Authorization": "Bearer env-secret-123456"}
    monkeypatch.delenv("VMCP_TEST_TOKEN")
    with pytest.raises(CredentialError, match=r"backend 'h': auth.headers.Authorization: .*VMCP_TEST_TOKEN"):
        BackendCredentials(http, tmp_path).headers()


def test_no_repr_shows_the_callers_token() -> None:
    token = "eyJhbGciOi.secret-token-value.signature"
    identity = Identity(subject="alice", method=Identification.TOKEN, token=BearerToken(token))
    caller = Caller("credential:x", Identification.TOKEN, "2026-07-28", subject="alice", token=identity.token)
    subject = SubjectToken(caller.id, token)
    for shown in (repr(identity), repr(caller), repr(subject), str(identity.token), repr(Token(token, 0.0))):
        assert token not in shown and "secret-token" not in shown
    assert token not in subject.key
