"""Token buckets in Redis (`rate_limits.store: redis`), shared by every replica; the limiter is
vmcp_opt/shared/rate_limits.py, which imports this module (and redis) only when the config selects it."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from vmcp_opt.config import VmcpConfig
from vmcp_opt.routing.budget import Bucket
from vmcp_opt.shared.redis_client import RedisLink, redis_client, redis_link, skip_unless_usable
from vmcp_opt.shared.redis_cluster import cluster_tag

# KEYS: the buckets' keys. ARGV: rate and burst of each, in KEYS order. Redis's own clock, so replicas'
# clocks need not agree. Returns {1} when taken, else {0, wait seconds as a string, 1-based index}.
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local levels = {}
local wait, refused = 0, 0
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local held = redis.call('HMGET', KEYS[i], 't', 'at')
  local tokens = tonumber(held[1])
  if tokens == nil then
    tokens = burst
  else
    tokens = math.min(burst, tokens + math.max(0, now - tonumber(held[2])) * rate)
  end
  levels[i] = tokens
  if tokens < 1 and (1 - tokens) / rate > wait then
    wait, refused = (1 - tokens) / rate, i
  end
end
if refused > 0 then
  return {0, tostring(wait), refused}
end
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('HSET', KEYS[i], 't', tostring(levels[i] - 1), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
return {1}
"""


class RedisBuckets:
    """Buckets in Redis, shared by every replica: one script call per tool call. A key expires once its
    bucket would be full again, so idle callers cost Redis nothing."""

    errors: tuple[type[Exception], ...] = (RedisError, RedisClusterException)

    def __init__(self, client: Redis, prefix: str, link: RedisLink | None = None) -> None:
        self.client = client
        self.link = link  # a Redis it knows unreachable is not asked: the call passes at once, unchecked
        # On a cluster every bucket is in one slot, `{rl}`: a call takes several buckets in one script (one node),
        # and a bucket (the shared one, a caller's) is taken with different others by different calls, so no
        # tag narrower than all of them keeps one key per bucket. A single Redis keeps the names it had.
        self.prefix = prefix + cluster_tag(client, "rl") + ":"
        self._script = client.register_script(TAKE_SCRIPT)

    async def take(self, buckets: Sequence[Bucket]) -> tuple[int, float] | None:
        skip_unless_usable(self.link)
        args: list[float] = []
        for bucket in buckets:
            args += [bucket.rate, bucket.burst]
        answer = await self._script(keys=[self.prefix + b.key for b in buckets], args=args)
        if int(answer[0]) == 1:
            return None
        return int(answer[2]) - 1, float(answer[1])

    async def close(self) -> None:
        await self.client.aclose()


def redis_buckets(config: VmcpConfig) -> RedisBuckets:
    return RedisBuckets(redis_client(config), config.redis.key_prefix, redis_link(config))
