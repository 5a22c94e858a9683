"""Token buckets: all-or-nothing across the buckets of a call, in memory and in a real Redis."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.redis_server import RedisServer, running_redis
from vmcp_opt.auth.caller import Caller, Identification, caller_key
from vmcp_opt.config import RateLimitsConfig, VmcpConfig
from vmcp_opt.shared.rate_limits import MemoryBuckets, RateLimiter, rate_limiter
from vmcp_opt.shared.redis_buckets import RedisBuckets

LIMITS = {"per_caller": {"rate": 1.0, "burst": 3}, "per_tool": {"slow": {"rate": 1.0, "burst": 1}}}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: RateLimiter, caller: str, tool: str) -> dict[str, object] | None:
    try:
        anyio.run(limiter.admit, caller, tool)
    except MCPError as exc:
        assert isinstance(exc.error.data, dict)
        return exc.error.data
    return None


def test_a_tool_refusal_does_not_drain_the_callers_budget() -> None:
    limiter = RateLimiter(RateLimitsConfig.model_validate(LIMITS), MemoryBuckets(Clock()))
    assert refused(limiter, "a", "slow") is None  # caller 3 → 2, slow 1 → 0
    for _ in range(5):
        data = refused(limiter, "a", "slow")
        assert data == {"limit": "rate_limits.per_tool.slow", "retry_after": 1.0}
    assert refused(limiter, "a", "fast") is None  # the five refusals took nothing from the caller: 2 → 1
    assert refused(limiter, "a", "fast") is None  # 1 → 0
    assert refused(limiter, "a", "fast") == {"limit": "rate_limits.per_caller", "retry_after": 1.0}
    assert refused(limiter, "b", "fast") is None  # another caller has a budget of its own


def test_buckets_refill_at_their_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimitsConfig.model_validate(LIMITS), MemoryBuckets(clock))
    for _ in range(3):
        assert refused(limiter, "a", "x") is None
    assert refused(limiter, "a", "x") is not None
    clock.now = 0.5
    data = refused(limiter, "a", "x")
    assert data is not None and data["retry_after"] == 0.5
    clock.now = 1.0
    assert refused(limiter, "a", "x") is None


def test_calls_inside_a_call_pay_only_their_tools_bucket() -> None:
    limiter = RateLimiter(RateLimitsConfig.model_validate(LIMITS), MemoryBuckets(Clock()))
    caller = Caller("session:1", Identification.SESSION, "2025-11-25")

    async def main() -> None:
        # The client's request (caller 3 → 2), then call_tool's target inside it (no caller token).
        async with limiter.admitted(caller, "call_tool"), limiter.admitted(caller, "target"):
            pass
        for _ in range(2):
            await limiter.admit("session:1", "x")

    anyio.run(main)
    assert refused(limiter, "session:1", "x") is not None


def test_a_verified_subject_is_one_budget_whatever_its_caller_id() -> None:
    one = Caller("credential:aa", Identification.API_KEY, "2026-07-28", subject="alice")
    two = Caller("credential:bb", Identification.API_KEY, "2026-07-28", subject="alice")
    assert caller_key(one) == caller_key(two) != caller_key(Caller("session:x", Identification.SESSION, "x"))
    assert "alice" not in caller_key(one)


def test_no_buckets_configured_means_no_limiter() -> None:
    assert rate_limiter(VmcpConfig()) is None


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def redis_limiter(server: RedisServer, prefix: str, **limits: object) -> RateLimiter:
    config = VmcpConfig(redis={"url": server.url, "key_prefix": prefix}, rate_limits={"store": "redis", **limits})
    limiter = rate_limiter(config)
    assert limiter is not None and isinstance(limiter.store, RedisBuckets)
    return limiter


async def attempt(limiter: RateLimiter, caller: str, tool: str) -> dict[str, object] | None:
    try:
        await limiter.admit(caller, tool)
    except MCPError as exc:
        assert isinstance(exc.error.data, dict)
        return exc.error.data
    return None


def test_redis_buckets_are_all_or_nothing_and_shared(redis: RedisServer) -> None:
    async def main() -> dict[str, object] | None:
        first = redis_limiter(redis, "t1:", **LIMITS)
        second = redis_limiter(redis, "t1:", **LIMITS)  # another replica on the same Redis
        assert await attempt(first, "a", "slow") is None
        for _ in range(5):
            data = await attempt(second, "a", "slow")
            assert data is not None and data["limit"] == "rate_limits.per_tool.slow"
        assert await attempt(second, "a", "fast") is None  # the refusals took nothing from the caller
        assert await attempt(first, "a", "fast") is None
        data = await attempt(second, "a", "fast")
        await first.close()
        await second.close()
        return data

    data = anyio.run(main)
    assert data is not None and data["limit"] == "rate_limits.per_caller"
    assert 0 < float(data["retry_after"]) <= 1.0  # type: ignore[arg-type]


def test_unreachable_redis_lets_calls_pass_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    async def main(limiter: RateLimiter) -> None:
        for _ in range(5):
            assert await attempt(limiter, "a", "x") is None

    with running_redis() as server:
        limiter = redis_limiter(server, "t2:", per_caller={"rate": 0.001, "burst": 1})
    # The server is gone now: every call passes, each is counted, one warning per interval.
    with caplog.at_level(logging.WARNING, "vmcp_opt.shared.rate_limits"):
        anyio.run(main, limiter)
    assert limiter.unchecked == 5
    lines = [r for r in caplog.records if "not checked" in r.getMessage()]
    assert len(lines) == 1


def test_redis_keys_expire_once_full_again(redis: RedisServer) -> None:
    async def main() -> int:
        limiter = redis_limiter(redis, "t3:", per_caller={"rate": 10.0, "burst": 5})
        assert await attempt(limiter, "a", "x") is None
        assert isinstance(limiter.store, RedisBuckets)
        ttl = int(await limiter.store.client.pttl("t3:rl:caller:a"))
        await limiter.close()
        return ttl

    assert 0 < anyio.run(main) <= 1500
