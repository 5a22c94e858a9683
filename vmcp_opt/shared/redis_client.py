"""One asyncio Redis client per gateway, from `redis:` (vmcp_opt/config.py)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from vmcp_opt.config import VmcpConfig
from vmcp_opt.shared.secrets import read_secret


def redis_client(config: VmcpConfig) -> aioredis.Redis:
    """Connects on first use; every command is bounded by `redis.timeout`. A command is tried again once, at
    once, only when its connection was refused or closed (a pooled connection left over from before Redis
    restarted fails its first use), never after a timeout: an unreachable Redis costs a request at most one
    timeout."""
    settings = config.redis
    password = read_secret(config, "redis.password", settings.password_env, settings.password_file)
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.url,
        password=password.decode() if password is not None else None,
        socket_timeout=settings.timeout,
        socket_connect_timeout=settings.timeout,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=0,
    )
    return client
