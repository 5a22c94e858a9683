"""Token buckets on tool calls: per caller, per tool and shared; in memory or in Redis.

Not tool calls alone: every request the gateway forwards to a backend for a client (`FORWARDED`:
`resources/read`, `prompts/get`, `completion/complete`, `resources/subscribe`, `logging/setLevel`) takes a token
from the caller's and the shared bucket as a tool call does (`RateLimiter.paid`; `per_tool` stays tools-only), else
a budget of one call a second let a client read resources or render prompts as fast as it could send them, or have
every backend told a log level at the rate it sent one. A `logging/setLevel` pays whether or not its level is new
(the HTTP gate cannot know; an unchanged one then reaches no backend, routing/sessions.py). What the gateway
answers from its catalogue (the lists, `ping`, `initialize`, notifications) stays free, and so does
`resources/unsubscribe`, which reaches a backend only for a subscription paid for, and which a client out of
budget must still be able to send.

A call names the buckets that apply (`RateLimiter.buckets`) and the store takes one token from each, or
from none: checked all first, then taken, atomically (one Lua script in Redis, one synchronous step in
memory). So a refusal by a tool's bucket never drains the caller's budget.

Only the request a client sent pays the caller's and the shared bucket; the calls it makes inside the
gateway (`call_tool`'s target, a workflow's steps) pay only their own tool's bucket. A context variable
set around the outer call says which is which.

A call the policy refuses pays no tool's bucket: the router takes the tokens only once the policy let the
call run, and the HTTP gate, which takes them before the router, asks the policy first (a forbidden caller
would otherwise empty a bucket shared by every caller). It still pays the caller's and the shared bucket:
a refused call costs the gateway work too, and those bound what a caller, and all callers, make it spend.

The Redis store is vmcp_opt/shared/redis_buckets.py, imported only when `rate_limits.store` is redis.
Redis unreachable (or too slow, past `redis.timeout`): the call passes. Failing open keeps the gateway
serving when its shared store is gone; each miss is counted (`RateLimiter.unchecked`) and logged at most
once per `rate_limits.log_interval`. Once the process knows Redis is unreachable, the calls pass without asking
it (no timeout each) until a probe finds it back (`RedisLink.usable`, vmcp_opt/shared/redis_client.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Protocol

from vmcp_opt.auth.caller import Caller, caller_key
from vmcp_opt.config import BucketConfig, RateLimitsConfig, ToolBucketConfig, VmcpConfig
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.routing.budget import Bucket, LimitReached, TokenBuckets

logger = logging.getLogger(__name__)

# Set while a client's tool call runs: calls made inside it pay only their tool's bucket.
_paid: ContextVar[bool] = ContextVar("vmcp_rate_limit_paid", default=False)

# Told of each refused call: the caller, the setting whose bucket was empty, the tool (or the forwarded method).
Refused = Callable[[Caller, str, str, str], None]  # (caller, setting, tool or method, method)

# The requests other than tool calls that reach a backend, each paying the caller's and the shared bucket.
FORWARDED = frozenset(
    {"resources/read", "prompts/get", "completion/complete", "resources/subscribe", "logging/setLevel"}
)


def bucket_of(key: str, config: BucketConfig | ToolBucketConfig, setting: str) -> Bucket:
    return Bucket(key, config.rate, config.burst, setting)


class BucketStore(Protocol):
    # What the store raises when it cannot be asked (Redis's errors); the call then passes unchecked.
    errors: tuple[type[Exception], ...]

    async def take(self, buckets: Sequence[Bucket]) -> tuple[int, float] | None:
        """One token from each bucket, or none: None when taken, else (index of a refusing bucket,
        seconds until it holds a token)."""
        ...

    async def close(self) -> None: ...


class MemoryBuckets(TokenBuckets):
    """Buckets of this process (routing/budget.py's, which the dedicated sessions' start rate uses too)."""

    errors: tuple[type[Exception], ...] = ()

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000) -> None:
        super().__init__(clock, max_buckets)

    async def take(self, buckets: Sequence[Bucket]) -> tuple[int, float] | None:
        return self.take_now(buckets)

    async def close(self) -> None:
        return None


class RateLimiter:
    def __init__(self, config: RateLimitsConfig, store: BucketStore) -> None:
        self.config = config
        self.store = store
        # Failures of the store that let a call through unchecked.
        self._store_errors: tuple[type[Exception], ...] = (*store.errors, OSError, TimeoutError)
        # Calls let through unchecked because the store could not be asked (Redis unreachable).
        self.unchecked = 0
        self.refused = 0
        # Told of each call `admitted` refuses (the router's refusals: every call over stdio, and inner calls
        # over HTTP): the gateway's `Telemetry.rate_limited`, set by the transport; None: nobody is told.
        self.on_refused: Refused | None = None
        self._log = ThrottledLog(logger, config.log_interval)

    def buckets(self, caller: str, tool: str, *, outer: bool, of_tool: bool = True) -> list[Bucket]:
        """The buckets a call of `tool` by `caller` pays; the caller's and the shared one only for `outer`, the
        tool's only for `of_tool`."""
        found: list[Bucket] = []
        limits = self.config
        if outer and limits.per_caller is not None:
            found.append(bucket_of(f"caller:{caller}", limits.per_caller, "rate_limits.per_caller"))
        per_tool = limits.per_tool.get(tool) if of_tool else None
        if per_tool is not None:
            key = f"tool:{tool}:{caller}" if per_tool.per_caller else f"tool:{tool}"
            found.append(bucket_of(key, per_tool, f"rate_limits.per_tool.{tool}"))
        if outer and limits.shared is not None:
            found.append(bucket_of("shared", limits.shared, "rate_limits.shared"))
        return found

    def limits_tool(self, tool: str) -> bool:
        """Whether `tool` has a bucket of its own (`rate_limits.per_tool`)."""
        return tool in self.config.per_tool

    async def admit(self, caller: str, tool: str, *, of_tool: bool = True) -> None:
        """Take this call's tokens or raise `LimitReached` (with `retry_after`); passes when the store fails.
        `of_tool` False: all but the tool's bucket (the HTTP gate, for a call the policy refuses)."""
        buckets = self.buckets(caller, tool, outer=not _paid.get(), of_tool=of_tool)
        if not buckets:
            return
        try:
            refused = await self.store.take(buckets)
        except self._store_errors as exc:
            self.unchecked += 1
            self._log.warning(
                "store",
                "rate limits not checked, calls pass (%d so far): %s: %s",
                self.unchecked,
                type(exc).__name__,
                exc,
            )
            return
        if refused is None:
            return
        self.refused += 1
        bucket = buckets[refused[0]]
        retry_after = math.ceil(refused[1] * 1000) / 1000
        self._log.warning(bucket.setting, "rate limited: %s for %s (%s)", caller, tool, bucket.setting)
        kind = bucket.key.split(":")[0]
        raise LimitReached(f"rate limit reached: the {kind} bucket is empty", bucket.setting, retry_after)

    @asynccontextmanager
    async def admitted(self, caller: Caller, tool: str, *, taken: bool = False) -> AsyncIterator[None]:
        """Around a tool call: its tokens taken first; calls made inside it are inner calls. `taken`: the
        client's request already paid at the HTTP gate (server/rate_limit_gate.py); an inner call pays
        its tool's bucket whatever the request did."""
        if _paid.get() or not taken:
            try:
                await self.admit(caller_key(caller), tool)
            except LimitReached as refused:
                self._tell_refused(caller, refused.setting, tool)
                raise
        token = _paid.set(True)
        try:
            yield
        finally:
            _paid.reset(token)

    async def paid(self, caller: Caller, method: str, *, taken: bool = False) -> None:
        """A forwarded request that is no tool call (`FORWARDED`) takes its caller's and the shared bucket's token
        (never a tool's), or raises `LimitReached`. `taken`: paid at the HTTP gate. Made inside a tool call,
        it is an inner call, paid for with it."""
        if taken or _paid.get():
            return
        try:
            await self.admit(caller_key(caller), method, of_tool=False)
        except LimitReached as refused:
            self._tell_refused(caller, refused.setting, method, method)
            raise

    def _tell_refused(self, caller: Caller, setting: str, tool: str, method: str = "tools/call") -> None:
        """Telemetry hears of the refusal; its failure is logged (throttled), the caller still gets the refusal."""
        if self.on_refused is None:
            return
        try:
            self.on_refused(caller, setting, tool, method)
        except Exception:
            self._log.warning("refused", "rate limit: telemetry of a refused call failed", exc_info=True)

    async def close(self) -> None:
        await self.store.close()


def rate_limiter(config: VmcpConfig) -> RateLimiter | None:
    """The limiter `rate_limits` describes; None when it sets no bucket (the router then skips the hook)."""
    limits = config.rate_limits
    if limits.per_caller is None and limits.shared is None and not limits.per_tool:
        return None
    if limits.store == "redis":
        from vmcp_opt.shared.redis_buckets import redis_buckets  # redis loads only when the config uses it

        return RateLimiter(limits, redis_buckets(config))
    return RateLimiter(limits, MemoryBuckets())
