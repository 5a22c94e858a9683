"""Redis clients per gateway, from `redis:` (vmcp_opt/config/limits.py): asyncio for the request path,
synchronous for the optimizer's background threads."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from vmcp_opt.config import VmcpConfig
from vmcp_opt.shared.secrets import read_secret


def redis_client(config: VmcpConfig) -> aioredis.Redis:
    """Connects on first use; every command is bounded by `redis.timeout`. A command is tried again once, at
    once, only when its connection was refused or closed (a pooled connection left over from before Redis
    restarted fails its first use), never after a timeout: an unreachable Redis costs a request at most one
    timeout."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        config.redis.url,
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        **_settings(config),
    )
    return client


def redis_sync_client(config: VmcpConfig) -> redis.Redis:
    """The same settings, for a thread (the optimizer's usage saver)."""
    client: redis.Redis = redis.Redis.from_url(
        config.redis.url, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), **_settings(config)
    )
    return client


def _settings(config: VmcpConfig) -> dict[str, Any]:
    settings = config.redis
    password = read_secret(config, "redis.password", settings.password_env, settings.password_file)
    return {
        "password": password.decode() if password is not None else None,
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "retry_on_timeout": False,
        "health_check_interval": 0,
    }
